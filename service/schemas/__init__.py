"""Request and response bodies of the routes, one module per resource (they become the OpenAPI
schema): :mod:`~service.schemas.classify`, :mod:`~service.schemas.av_event`,
:mod:`~service.schemas.adapters`, :mod:`~service.schemas.health`, and
:mod:`~service.schemas.common` (the error body every route shares)."""

from __future__ import annotations

from service.schemas.adapters import (
    ActivateRequest,
    ActivateResult,
    AdapterInfo,
    AdapterList,
    AdapterSummary,
    DeleteResult,
    UploadResult,
    VersionInfo,
)
from service.schemas.av_event import AvEvent, AvEventResponse, SecondLabel
from service.schemas.classify import AdapterResult, ClassifyResponse, LabelScore, Window
from service.schemas.common import ErrorBody
from service.schemas.health import Health, Readiness

__all__ = [
    "ActivateRequest",
    "ActivateResult",
    "AdapterInfo",
    "AdapterList",
    "AdapterResult",
    "AdapterSummary",
    "AvEvent",
    "AvEventResponse",
    "ClassifyResponse",
    "DeleteResult",
    "ErrorBody",
    "Health",
    "LabelScore",
    "Readiness",
    "SecondLabel",
    "UploadResult",
    "VersionInfo",
    "Window",
]
