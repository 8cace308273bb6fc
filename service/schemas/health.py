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


class ServerInfo(BaseModel):
    """``GET /info``: what this server runs, so a client can check an adapter fits before
    uploading it (``backbone`` is what an adapter's manifest must name)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "version": "0.1.0",
                    "backbone": "test_vit@3f2a9c0d1e4b5a6c",
                    "device": "cpu",
                    "dtype": "fp32",
                    "engine": "torch",
                }
            ]
        }
    )

    version: str = Field(description="the `lookaside` package's version")
    backbone: str = Field(
        description="`<name>@<fingerprint>`: the backbone's config name and the hash of its "
        "architecture and weights that adapter checkpoints must match"
    )
    device: str = Field(
        description="where the forward runs (`cpu`, `cuda:0`); on Ray, the model replicas' "
        "`device` setting (`auto`: each replica takes its GPU when it has one)"
    )
    dtype: str = Field(
        description="compute precision: the `dtype` setting (engine `torch`) or "
        "`ort_precision` (engine `onnxruntime`)"
    )
    engine: str = Field(description="runtime of the backbone pass: `torch` or `onnxruntime`")
