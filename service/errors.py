"""Errors of the service and the one place every error becomes an HTTP answer.

:func:`install` registers handlers that map :mod:`lookaside.errors` and the service's own errors
to a 4xx/5xx with a ``detail`` saying what to fix; overload and not-ready answers carry
``Retry-After``. Anything unexpected is logged with its trace and answered as an opaque 500, so a
bug never leaks internals and bad input never gets a 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lookaside.errors import (
    AdapterNotFound,
    BadAudio,
    BadVideo,
    BankFull,
    ConfigError,
    DeadlineExceeded,
    IncompatibleBackbone,
    InvalidCheckpoint,
    LookasideError,
)

log = logging.getLogger("service.errors")

# BadAudio.reason -> status: the container/codec is wrong (415) or the audio is unusable (422).
_BAD_AUDIO_STATUS = {"not_audio": 415, "unsupported": 415, "too_long": 413, "too_large": 413}
# BadVideo: over a limit (BadVideo.over_limit) 413; not a video / unsupported codec 415; else 422.
_BAD_VIDEO_STATUS = {"not_video": 415, "unsupported": 415}


class StartupFailed(LookasideError):
    """The server cannot start for a reason already logged in one line (a bad backbone file, a
    store that cannot be opened); uvicorn's copy of its traceback is dropped
    (:class:`service.logging.OwnStartupFailureFilter`) and the process exits 3."""


class ServiceError(LookasideError):
    """An error of the service itself, carrying its HTTP status."""

    status_code = 500
    retry_after: bool = False

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class PayloadTooLarge(ServiceError):
    """The request body is over ``max_media_bytes`` (clips, videos) or ``max_upload_bytes``
    (adapters)."""

    status_code = 413


class UnsupportedMediaType(ServiceError):
    """The request's Content-Type is not one this route reads."""

    status_code = 415


class BadRequest(ServiceError):
    """A field is missing or malformed (not the audio itself)."""

    status_code = 422


class QueueFull(ServiceError):
    """The engine's queue is at capacity: retry shortly."""

    status_code = 429
    retry_after = True


class NotReady(ServiceError):
    """The server is starting (reason says which step) or shutting down."""

    status_code = 503
    retry_after = True


class BodyTimeout(ServiceError):
    """The request body did not arrive within ``body_timeout_s`` (the connection is closed)."""

    status_code = 408


class BodyBudgetExceeded(ServiceError):
    """Accepting this body would pass ``max_inflight_body_bytes`` over all requests: retry."""

    status_code = 503
    retry_after = True


class TooManyConnections(ServiceError):
    """More than ``max_connections`` connections or requests are open: retry."""

    status_code = 503
    retry_after = True


class RequestTimeout(ServiceError):
    """The request was not answered within ``request_timeout_s``."""

    status_code = 504


class EngineFailure(ServiceError):
    """The model failed on this row (a bug, not bad input): logged with a trace."""

    status_code = 500


class OverBudget(BadRequest, ValueError):
    """One row (window) of a job needs more tokens than one forward may hold (422)."""

    @classmethod
    def for_row(
        cls, adapter_id: str | None, grid: tuple[int, ...], tokens: int, limit: int
    ) -> OverBudget:
        """The one message, whichever engine (local or a Ray replica's ingress) refuses."""
        return cls(
            f"one window of this request for adapter {adapter_id} (grid "
            f"{'x'.join(map(str, grid))}) is {tokens} tokens, over the per-forward "
            f"budget max_batch_tokens={limit}: this server cannot run the "
            "adapter; raise LOOKASIDE_MAX_BATCH_TOKENS, or use an adapter with fewer mel bins "
            "or frames per window"
        )


class AdapterUnavailable(ServiceError):
    """A stored adapter version could not be made resident now (HTTP 503, retry later)."""

    status_code = 503
    retry_after = True


class ReplicaUnavailable(ServiceError):
    """Ray Serve: no model replica answered (one died mid-request and the retry found none, or
    the deployment is scaling); never a wrong answer (HTTP 503, retry later)."""

    status_code = 503
    retry_after = True


class StoreBusy(ServiceError):
    """Another process held the shared store's write lock past the wait bound (HTTP 503)."""

    status_code = 503
    retry_after = True


class UploadTooLarge(PayloadTooLarge):
    """An uploaded file is over the store's size limit (HTTP 413)."""


class ActiveVersionConflict(ServiceError):
    """Deleting the active version was asked without ``force`` (HTTP 409)."""

    status_code = 409


def status_of(exc: LookasideError) -> int:
    """HTTP status of a project error."""
    if isinstance(exc, ServiceError):
        return exc.status_code
    if isinstance(exc, AdapterNotFound):
        return 404
    if isinstance(exc, BadAudio):
        return _BAD_AUDIO_STATUS.get(exc.reason, 422)
    if isinstance(exc, BadVideo):
        return 413 if exc.over_limit else _BAD_VIDEO_STATUS.get(exc.reason, 422)
    if isinstance(exc, IncompatibleBackbone):
        return 409
    if isinstance(exc, InvalidCheckpoint | ConfigError):
        return 422
    if isinstance(exc, BankFull):  # no free slot right now: retry shortly
        return 503
    if isinstance(exc, DeadlineExceeded):  # the request's own timeout, seen by its decoder
        return 504
    return 500


def error_body(exc: LookasideError, status: int) -> dict[str, object]:
    """JSON body of an error answer: ``detail`` (what to fix) and a machine-readable ``error``."""
    body: dict[str, object] = {"detail": str(exc), "error": type(exc).__name__}
    reason = getattr(exc, "reason", None)
    if reason:
        body["reason"] = reason
    if status >= 500 and not isinstance(exc, ServiceError):
        body["detail"] = "internal error; the server log has the trace"
    return body


def install(app: FastAPI, *, retry_after_s: int) -> None:
    """Register the exception handlers on ``app``."""

    async def lookaside_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LookasideError)
        status = status_of(exc)
        if status >= 500 and status not in (503, 504):
            log.error("request failed: %s", exc, exc_info=exc)
        headers = {}
        if status in (429, 503) or getattr(exc, "retry_after", False):
            headers["Retry-After"] = str(retry_after_s)
        return JSONResponse(error_body(exc, status), status_code=status, headers=headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        ]
        return JSONResponse(
            {"detail": "; ".join(problems) or "invalid request", "error": "RequestValidation"},
            status_code=422,
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse(
            {"detail": exc.detail, "error": "HTTPError"},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %s", exc, exc_info=exc)
        return JSONResponse(
            {"detail": "internal error; the server log has the trace", "error": "Internal"},
            status_code=500,
        )

    app.add_exception_handler(LookasideError, lookaside_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
