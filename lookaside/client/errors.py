"""Errors of :mod:`lookaside.client`: one class per way a caller acts differently.

An HTTP error answer becomes an :class:`ApiError` (or a subclass) carrying the server's own
``detail`` message, which already says what to fix; failures without an answer (no server, a
timeout, an answer too large or not the expected JSON) are :class:`ConnectionFailed` and
:class:`InvalidResponse`, each naming the URL. All derive from :class:`ClientError`, a
:class:`~lookaside.errors.LookasideError`, so the project's CLIs print them as one line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from lookaside.errors import LookasideError

__all__ = [
    "ApiError",
    "ClientError",
    "Conflict",
    "ConnectionFailed",
    "InvalidResponse",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "Unauthorized",
    "api_error",
]

_MAX_DETAIL_CHARS = 2000


class ClientError(LookasideError):
    """Anything :mod:`lookaside.client` raises on purpose."""


class ConnectionFailed(ClientError):
    """No answer: the server could not be reached, or did not answer within the timeout."""


class InvalidResponse(ClientError):
    """An answer the client will not use: over the size limit, not JSON, or not the schema."""


class ApiError(ClientError):
    """The server answered with an error status; ``detail`` is its message.

    Attributes:
        status_code: the HTTP status.
        detail: the server's ``detail`` (what is wrong and what to do), or the answer's text.
        headers: the answer's headers (lower-case names).
        error: the server's machine-readable ``error`` name (``AdapterNotFound``), if any.
        reason: the server's ``reason`` code (``too_many_rows``), if any.
    """

    def __init__(
        self,
        status_code: int,
        detail: str,
        headers: Mapping[str, str] | None = None,
        *,
        error: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(f"the server answered {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.headers = dict(headers or {})
        self.error = error
        self.reason = reason


class Unauthorized(ApiError):
    """401 (no admin token sent) or 403 (a wrong one): fix the token, do not retry."""


class NotFound(ApiError):
    """404: unknown adapter or version; ``detail`` lists what exists."""


class Conflict(ApiError):
    """409: made for another backbone, or deleting the active version without ``force``."""


class PayloadTooLarge(ApiError):
    """413: a body, clip or video over one of the server's limits (``detail`` names it)."""


class Overloaded(ApiError):
    """429 (queue full) or 503 (not ready, shutting down, cannot load now): retry later."""

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked to wait (its ``Retry-After``), or None."""
        return parse_retry_after(self.headers.get("retry-after"))


_CLASSES: dict[int, type[ApiError]] = {
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: Overloaded,
    503: Overloaded,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/bad."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def api_error(status_code: int, body: bytes, headers: Mapping[str, str], reason: str) -> ApiError:
    """The error for an answer of ``status_code`` (>= 400) with ``body``; ``reason`` is the
    status's phrase, used when the body says nothing."""
    detail: str | None = None
    error = code = None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        detail = _detail_text(data.get("detail"))
        error = data.get("error") if isinstance(data.get("error"), str) else None
        code = data.get("reason") if isinstance(data.get("reason"), str) else None
    if not detail:
        detail = body[:_MAX_DETAIL_CHARS].decode("utf-8", errors="replace").strip() or reason
    cls = _CLASSES.get(status_code, ApiError)
    return cls(status_code, detail[:_MAX_DETAIL_CHARS], headers, error=error, reason=code)


def _detail_text(detail: object) -> str | None:
    """A string ``detail``, or FastAPI's validation list as ``field: message; ...``."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
        return "; ".join(parts) or None
    return None
