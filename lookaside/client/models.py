"""Typed answers of the Lookaside HTTP API, as :class:`~lookaside.client.Client` returns them.

They mirror the server's response schemas (``service/schemas/``, also the OpenAPI document at
``/openapi.json``) field for field, with the same names and types, except that a string the server
types as one of a fixed set (a residency ``state``) is a plain ``str`` here: a newer server may
add a value, and an older client must still read its answers. Unknown fields are kept, not refused
(``extra="allow"``), for the same reason. A unit test compares these with the server's schemas.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = [
    "ActivateResult",
    "AdapterInfo",
    "AdapterList",
    "AdapterResult",
    "AdapterSummary",
    "AvEvent",
    "AvEventResponse",
    "ClassifyResponse",
    "DeleteResult",
    "Info",
    "LabelScore",
    "SecondLabel",
    "UploadResult",
    "VersionInfo",
    "Window",
]


class _Answer(BaseModel):
    """Tolerant of fields a newer server adds (they stay readable as attributes)."""

    model_config = ConfigDict(extra="allow")


class Info(_Answer):
    """``GET /info``: what the server runs."""

    version: str
    backbone: str
    """The backbone adapters must be made for, ``name@fingerprint``."""
    device: str
    dtype: str
    engine: str

    @property
    def backbone_name(self) -> str:
        return self.backbone.rpartition("@")[0] or self.backbone

    @property
    def backbone_fingerprint(self) -> str:
        return self.backbone.rpartition("@")[2]


class LabelScore(_Answer):
    label: str
    score: float
    """Softmax probability (single-label task) or sigmoid (multi-label)."""


class Window(_Answer):
    """One window of a clip longer than the adapter's window."""

    start_s: float
    end_s: float
    labels: list[LabelScore]


class AdapterResult(_Answer):
    """One adapter's answer for the clip."""

    adapter: str
    version: int
    """The version that served this answer."""
    labels: list[LabelScore]
    """Top-k labels of the clip (for a long clip: mean of the window scores)."""
    timeline: list[Window] | None = None
    """Per-window top-k labels; only for clips longer than one window."""


class ClassifyResponse(_Answer):
    """``POST /classify``: one result per adapter named, in the order named."""

    request_id: str
    duration_s: float
    results: list[AdapterResult]


class SecondLabel(_Answer):
    t: int
    label: str
    score: float


class AvEvent(_Answer):
    """Consecutive seconds with the same non-background label (``end_s`` exclusive)."""

    start_s: float
    end_s: float
    label: str
    score: float


class AvEventResponse(_Answer):
    """``POST /av-event``: every second's label and the events they form."""

    request_id: str
    adapter: str
    version: int
    duration_s: float
    seconds: list[SecondLabel]
    events: list[AvEvent]
    notes: list[str] = []
    """What the answer leaves out, e.g. the cut end of an audio track longer than the video."""


class AdapterSummary(_Answer):
    """One adapter of ``GET /adapters``."""

    name: str
    active: int | None
    versions: list[int]
    resident: list[int]
    state: str | None
    task: str | None
    method: str | None


class AdapterList(_Answer):
    """One page of ``GET /adapters`` (:meth:`Client.adapters` follows every page)."""

    adapters: list[AdapterSummary]
    next_cursor: str | None = None
    total: int


class VersionInfo(_Answer):
    """One stored version: its manifest's essentials and its residency."""

    version: int
    active: bool
    state: str
    reason: str | None = None
    resident: bool
    requests: int
    task: str
    task_type: str
    method: str
    config: dict[str, Any]
    labels: list[str]
    metrics: dict[str, float]
    backbone: str
    weights_sha256: str
    created: datetime


class AdapterInfo(_Answer):
    """``GET /adapters/{name}``: every version of one adapter."""

    name: str
    active: int | None
    state: str | None
    requests: int
    versions: list[VersionInfo]


class UploadResult(_Answer):
    """``POST /adapters``: the version the store assigned (``created`` False: already stored)."""

    name: str
    version: int
    created: bool
    active: bool


class ActivateResult(_Answer):
    """The active version after an activation or rollback, and the one before."""

    name: str
    active: int
    previous: int | None


class DeleteResult(_Answer):
    """What a delete removed, and the active version afterwards (None: the name is gone)."""

    name: str
    deleted: list[int]
    active: int | None
