"""Logging: the request id in every line of a request, as text or one JSON object per line.

The request id (the client's ``X-Request-ID`` or a fresh one) lives in a context variable set by
:class:`RequestIdMiddleware`; :class:`RequestIdFilter` copies it into each record. Work handed to
the featurize pool runs in a copy of the request's context, so its lines carry the id too; the
engine worker names the request ids of a batch explicitly in its messages.

:class:`RedactQueryFilter` removes query strings from every line (uvicorn's access log and ours):
a token pasted into ``?token=...`` must not land in the logs. Paths stay.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import StartupFailed

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
HEADER = "x-request-id"
SCOPE_KEY = "lookaside.request_id"
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


_QUERY = re.compile(r"(/[^\s?\"']*)\?[^\s\"']*")
REDACTED = "?<redacted>"


def redact_queries(text: str) -> str:
    """``text`` with the query string of every path or URL in it replaced by ``?<redacted>``."""
    return _QUERY.sub(lambda m: m.group(1) + REDACTED, text)


class RedactQueryFilter(logging.Filter):
    """Rewrites each record's message without query strings."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message:
            record.msg = redact_queries(message)
            record.args = None
        return True


_STARTUP_FAILED = f"{StartupFailed.__module__}.{StartupFailed.__qualname__}"


class OwnStartupFailureFilter(logging.Filter):
    """Drops uvicorn's traceback of a lifespan that failed with :class:`StartupFailed`.

    Starlette hands uvicorn the failed lifespan's whole traceback, which uvicorn logs. When the
    cause is one of ours (a corrupt backbone file, a store that cannot be opened), the lifespan
    has already logged the reason in one line, so the frames only bury it; any other failure
    keeps its traceback (a bug must stay debuggable).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Traceback"):
            return True
        last = message.rstrip().rsplit("\n", 1)[-1]
        return last.split(":", 1)[0] != _STARTUP_FAILED


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, message (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        body = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure(log_format: str, level: str) -> None:
    """Route the ``service``, ``lookaside`` and ``uvicorn`` loggers through one handler."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactQueryFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    for name in ("service", "lookaside", "uvicorn", "uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    logging.getLogger("uvicorn.error").addFilter(OwnStartupFailureFilter())


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


class RequestIdMiddleware:
    """Echo the client's ``X-Request-ID`` (if well-formed) or make one; set it for logging."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = ""
        for key, value in scope.get("headers", []):
            if key.decode("latin-1").lower() == HEADER:
                given = value.decode("latin-1").strip()
                break
        request_id = given if _VALID_ID.fullmatch(given) else new_request_id()
        scope[SCOPE_KEY] = request_id  # not scope["state"]: a lifespan state may be shared
        token = REQUEST_ID.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != HEADER.encode()
                ]
                headers.append((HEADER.encode(), request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
