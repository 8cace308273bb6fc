"""``GET /healthz`` and ``GET /readyz``: their answers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Health(BaseModel):
    """``GET /healthz``: the process is alive."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: str


class Readiness(BaseModel):
    """``GET /readyz``: ready to serve, or why not yet."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"ready": True, "reason": None, "adapters": 3},
                {"ready": False, "reason": "warming up", "adapters": 3},
            ]
        }
    )

    ready: bool
    reason: str | None = None
    adapters: int = Field(0, description="adapter versions resident on the device")
