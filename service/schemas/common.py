"""What every route answers on an error."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ErrorBody(BaseModel):
    """Every error answer."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "detail": "unknown adapter 'esc50@3'; versions of 'esc50': 1, 2 (active: 2)",
                    "error": "AdapterNotFound",
                }
            ]
        }
    )

    detail: str
    error: str
    reason: str | None = None
