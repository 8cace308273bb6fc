"""Request and response bodies of the adapter management routes (they become the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_VERSION_EXAMPLE: dict[str, Any] = {
    "version": 2,
    "active": True,
    "state": "ready",
    "reason": None,
    "resident": True,
    "pinned": False,
    "in_flight": 0,
    "requests": 1520,
    "loads": 1,
    "evictions": 0,
    "load_seconds": 0.041,
    "tier": "device",
    "task": "environmental sounds",
    "task_type": "multiclass",
    "method": "loaa",
    "config": {"rank": 8, "kernels": "attn:T,ffn:F"},
    "labels": ["dog", "rooster", "rain"],
    "trainable_params": 1720000,
    "trainable_percent": 2.01,
    "metrics": {"accuracy": 0.93},
    "backbone": "vit_base_patch16@3f9c2a1b",
    "weights_sha256": "9b74c9897bac770ffc029102a200c5de3f0c1a1c2bd8e8b1c1e4f1c3b0a1d2e3",
    "created": "2026-11-25T15:00:00Z",
}


class VersionInfo(BaseModel):
    """One stored version: its manifest's essentials and its residency."""

    model_config = ConfigDict(json_schema_extra={"examples": [_VERSION_EXAMPLE]})

    version: int
    active: bool = Field(description="whether requests naming only the adapter get this version")
    state: Literal["unloaded", "loading", "ready", "failed"] = Field(
        description="residency: `unloaded` (on disk only), `loading`, `ready` (in a bank slot) "
        "or `failed` (see `reason`; retried on the next request)"
    )
    reason: str | None = Field(None, description="why the last load failed")
    resident: bool = Field(description="loaded or loading on the device")
    pinned: bool = Field(description="never evicted (LOOKASIDE_PINNED)")
    in_flight: int = Field(description="requests queued or running on this version now")
    requests: int = Field(description="requests admitted for this version since startup")
    loads: int = Field(description="times it was loaded since startup")
    evictions: int = Field(description="times it was evicted to make room since startup")
    load_seconds: float | None = Field(None, description="duration of the last load")
    tier: Literal["device", "host", "disk"] = Field(
        "disk",
        description="where it is now: `device` (resident or loading), `host` (packed in host "
        "memory: a reload reads no disk) or `disk` (the store only)",
    )
    task: str
    task_type: Literal["multiclass", "multilabel"]
    method: str
    config: dict[str, Any]
    labels: list[str]
    trainable_params: int
    trainable_percent: float = Field(description="adapter parameters as % of the backbone's")
    metrics: dict[str, float]
    backbone: str = Field(description="backbone it was trained on, `name@fingerprint`")
    weights_sha256: str
    created: datetime


class AdapterInfo(BaseModel):
    """``GET /adapters/{name}``: every version of one adapter."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "esc50",
                    "active": 2,
                    "state": "ready",
                    "requests": 1620,
                    "versions": [_VERSION_EXAMPLE],
                }
            ]
        }
    )

    name: str
    active: int | None = Field(description="active version (None: only `name@version` works)")
    state: Literal["unloaded", "loading", "ready", "failed"] | None = Field(
        description="residency state of the active version"
    )
    requests: int = Field(description="requests admitted for any version since startup")
    versions: list[VersionInfo]


class AdapterSummary(BaseModel):
    """One adapter in ``GET /adapters``."""

    name: str
    active: int | None
    versions: list[int]
    resident: list[int] = Field(description="versions loaded or loading on the device")
    state: Literal["unloaded", "loading", "ready", "failed"] | None = Field(
        description="residency state of the active version"
    )
    task: str | None = Field(description="task of the active (else newest) version")
    method: str | None = Field(description="method of the active (else newest) version")


class AdapterList(BaseModel):
    """``GET /adapters``: one page of adapters, sorted by name."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "adapters": [
                        {
                            "name": "esc50",
                            "active": 2,
                            "versions": [1, 2],
                            "resident": [2],
                            "state": "ready",
                            "task": "environmental sounds",
                            "method": "loaa",
                        }
                    ],
                    "next_cursor": None,
                    "total": 1,
                }
            ]
        }
    )

    adapters: list[AdapterSummary] = Field(description="this page's adapters, sorted by name")
    next_cursor: str | None = Field(
        None,
        description="pass as `cursor` to get the next page; null on the last page",
    )
    total: int = Field(description="adapters in the store now (all pages)")


class UploadResult(BaseModel):
    """``POST /adapters``: the version the upload is stored as."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "esc50", "version": 3, "created": True, "active": False},
                {"name": "esc50", "version": 2, "created": False, "active": True},
            ]
        }
    )

    name: str
    version: int = Field(description="version assigned by the store (the manifest's is replaced)")
    created: bool = Field(description="False: identical content was already stored as `version`")
    active: bool = Field(description="whether `version` is now the active version")


class ActivateRequest(BaseModel):
    """``POST /adapters/{name}/activate`` body."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 1}]})

    version: int = Field(ge=1, description="stored version to make live (older = rollback)")

    @field_validator("version", mode="before")
    @classmethod
    def _not_a_boolean(cls, v: object) -> object:
        # JSON true is not a version (pydantic's lax mode would read it as 1); 3.0 still is 3
        if isinstance(v, bool):
            raise ValueError("version must be an integer, not a boolean")
        return v


class ActivateResult(BaseModel):
    """The pointer after an activation."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "esc50", "active": 1, "previous": 2}]}
    )

    name: str
    active: int
    previous: int | None


class DeleteResult(BaseModel):
    """What a delete removed, and the active version afterwards."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "esc50", "deleted": [1], "active": 2}]}
    )

    name: str
    deleted: list[int]
    active: int | None = Field(description="active version afterwards (None: name gone)")
