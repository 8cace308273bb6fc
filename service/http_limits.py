"""Connection and body limits uvicorn and Starlette do not have, kept as small as possible.

uvicorn already gives the keep-alive timeout, the concurrency cap (``limit_concurrency``) and the
header size bound (h11's incomplete-event size); :func:`service.__main__.uvicorn_config` sets
them. What is added here:

* :func:`bounded_h11` -- uvicorn's h11 protocol plus a **header timeout**: a connection whose
  request headers are not complete within ``header_timeout_s`` of connecting, or of the previous
  response, is closed (uvicorn arms no timer before the first request, and any byte received
  cancels its keep-alive timer, so a client dribbling headers was never closed). The concurrency
  cap answers 503 with ``Retry-After`` and a JSON ``detail`` (uvicorn's is plain text without
  ``Retry-After``) and counts exactly ``max_connections`` (uvicorn's counts its own connection).
* :class:`BodyLimits` -- ASGI middleware: a **whole-body deadline** (``body_timeout_s``; a
  slower body, or a Content-Length never sent, gets 408 and the connection is closed) and a
  **budget of in-flight body bytes** over all requests (``max_inflight_body_bytes``): a declared
  Content-Length that would pass it gets 503 + ``Retry-After`` before a byte of the body is read;
  a chunked body is counted as it arrives. A body larger than the whole budget gets 413 (waiting
  cannot help). The bytes are given back when the request ends, however it ends.

Routes keep their own, smaller per-route limits (413); these bound the server as a whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar, NoReturn, cast

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from service.errors import (
    BodyBudgetExceeded,
    BodyTimeout,
    PayloadTooLarge,
    ServiceError,
    TooManyConnections,
    error_body,
)

log = logging.getLogger("service.http_limits")

CLIENT_GONE_KEY = "lookaside.client_gone"
"""Scope key set when the client disconnected before its body arrived (metrics count it as
status 499, as nginx does, not as a server error)."""


# -- connections ----------------------------------------------------------------------------------
class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a JSON 503 at the connection cap.

    Subclassed per server by :func:`bounded_h11`, which sets the class attributes; the cap is
    uvicorn's ``limit_concurrency``, checked here instead so the 503 carries ``Retry-After``.
    """

    header_timeout_s: ClassVar[float] = 10.0
    keep_alive_timeout_s: ClassVar[float] = 5.0
    retry_after_s: ClassVar[int] = 1

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # uvicorn's Config takes whole seconds; the timer itself takes any float.
        self.timeout_keep_alive = self.keep_alive_timeout_s  # type: ignore[assignment]
        self.max_connections = config.limit_concurrency
        self.limit_concurrency = None  # checked by _capped instead, with Retry-After
        self._app = self.app
        self.app = self._capped
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request: its cycle is then live
        if not self.transport.is_closing():
            self._arm_header_timer()

    def handle_websocket_upgrade(self, event: Any) -> None:
        # the connection now belongs to the WebSocket protocol (GET /stream), whose own limits
        # apply; a header timer left armed would close its transport mid-session
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _waiting_for_a_request(self) -> bool:
        """No request in progress: before the first one, or after the last one was answered
        (whether the client is silent, dribbling headers, or still sending an unread body)."""
        return self.cycle is None or self.cycle.response_complete

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._waiting_for_a_request() and not self.transport.is_closing():
            log.debug(
                "closing %s: no complete request headers within %.1f s",
                self.client,
                self.header_timeout_s,
            )
            self.transport.close()

    async def _capped(self, scope: Any, receive: Any, send: Any) -> None:
        """The app, or 503 when more than ``max_connections`` connections or requests are open
        (both counts include this one)."""
        cap = self.max_connections
        if cap is not None and (len(self.connections) > cap or len(self.tasks) > cap):
            log.warning(
                "refused a request: %d connections, %d requests open, max_connections=%d",
                len(self.connections),
                len(self.tasks),
                cap,
            )
            exc = TooManyConnections(
                f"the server has {cap} connections or requests open (max_connections); retry "
                "after Retry-After seconds, or raise LOOKASIDE_MAX_CONNECTIONS"
            )
            await send_error(send, exc, retry_after_s=self.retry_after_s)
            return
        await self._app(scope, receive, send)


def bounded_h11(
    *,
    header_timeout_s: float,
    keep_alive_timeout_s: float,
    retry_after_s: int,
) -> type[H11Protocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)`` for these limits (the
    connection cap is the config's ``limit_concurrency``)."""
    attrs = {
        "header_timeout_s": header_timeout_s,
        "keep_alive_timeout_s": keep_alive_timeout_s,
        "retry_after_s": retry_after_s,
    }
    return cast(type[H11Protocol], type("BoundedH11Protocol", (HeaderTimeoutH11,), attrs))


# -- bodies ---------------------------------------------------------------------------------------
class InflightBytes:
    """Request-body bytes reserved or received and not yet given back, over all requests."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes if they fit (one event loop: no await between test and add)."""
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give_back(self, n: int) -> None:
        self.used -= n


async def send_error(send: Send, exc: ServiceError, *, retry_after_s: int) -> None:
    """Answer ``exc`` as the error handlers do (JSON ``detail``), closing the connection: the
    body was not read, so the connection cannot carry another request."""
    body = json.dumps(error_body(exc, exc.status_code)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if exc.retry_after:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _body_framing(scope: Scope) -> tuple[int | None, bool]:
    """(declared Content-Length, chunked) of the request (h11 has already refused malformed
    framing with 400)."""
    length: int | None = None
    chunked = False
    for key, value in scope.get("headers", []):
        if key == b"content-length" and value.strip().isdigit():
            length = int(value)
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return length, chunked


class BodyLimits:
    """Whole-body deadline and in-flight byte budget (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, *, budget: InflightBytes, body_timeout_s: float, retry_after_s: int
    ) -> None:
        self.app = app
        self.budget = budget
        self.body_timeout_s = body_timeout_s
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked = _body_framing(scope)
        if not declared and not chunked:  # no body: nothing to bound
            await self.app(scope, receive, send)
            return
        reserved = 0 if chunked else int(declared or 0)
        if reserved > self.budget.limit:
            await send_error(send, self._too_large(reserved), retry_after_s=self.retry_after_s)
            return
        if not self.budget.take(reserved):
            log.warning(
                "refused a body of %d bytes: %d of %d in flight",
                reserved,
                self.budget.used,
                self.budget.limit,
            )
            await send_error(send, self._over_budget(), retry_after_s=self.retry_after_s)
            return
        guard = _BodyGuard(self, receive, send, chunked=chunked)
        try:
            await self.app(scope, guard.receive, guard.send)
        except ServiceError as exc:
            if exc is not guard.refusal:
                raise
        except ClientDisconnect:  # the client left mid-body: nobody to answer, nothing broke
            scope[CLIENT_GONE_KEY] = True
            log.info("the client disconnected before its body arrived")
        finally:
            self.budget.give_back(reserved + guard.counted)

    def _too_large(self, size: int | None) -> PayloadTooLarge:
        what = f"the body ({size} bytes)" if size is not None else "the chunked body"
        return PayloadTooLarge(
            f"{what} is over the in-flight body budget of the whole server "
            f"({self.budget.limit} bytes); send a smaller body or raise "
            "LOOKASIDE_MAX_INFLIGHT_BODY_BYTES"
        )

    def _over_budget(self) -> BodyBudgetExceeded:
        return BodyBudgetExceeded(
            "the server is receiving too many request bodies at once (max_inflight_body_bytes "
            f"= {self.budget.limit} bytes); retry after Retry-After seconds, or raise "
            "LOOKASIDE_MAX_INFLIGHT_BODY_BYTES"
        )


class _BodyGuard:
    """One request's receive/send wrappers: the deadline, chunk counting, and the refusal.

    A refusal is answered at once on the real ``send`` (408/503/413, ``Connection: close``), then
    raised into the app as a :class:`ServiceError` so the route stops where it reads; whatever the
    app answers after that is dropped.
    """

    def __init__(self, limits: BodyLimits, receive: Receive, send: Send, *, chunked: bool) -> None:
        self.limits = limits
        self.chunked = chunked
        self._receive = receive
        self._send = send
        self.deadline = asyncio.get_running_loop().time() + limits.body_timeout_s
        self.counted = 0
        self.complete = False
        self.started = False
        self.refusal: ServiceError | None = None

    async def receive(self) -> Message:
        if self.complete or self.refusal is not None:
            return await self._receive()  # body done: e.g. waiting for http.disconnect
        remaining = self.deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                message = await self._receive()
        except TimeoutError:
            limit = self.limits.body_timeout_s
            await self._refuse(
                BodyTimeout(
                    f"the request body was not received within {limit:g} s "
                    "(body_timeout_s); send it faster, or raise LOOKASIDE_BODY_TIMEOUT_S"
                )
            )
        if message["type"] != "http.request":
            return message
        if not message.get("more_body", False):
            self.complete = True
        chunk = len(message.get("body", b""))
        if chunk and self.chunked:  # no Content-Length was reserved: count as it arrives
            if self.counted + chunk > self.limits.budget.limit:
                await self._refuse(self.limits._too_large(None))
            if not self.limits.budget.take(chunk):
                await self._refuse(self.limits._over_budget())
            self.counted += chunk
        return message

    async def _refuse(self, exc: ServiceError) -> NoReturn:
        self.refusal = exc
        if exc.status_code == 503:
            log.warning("refused a body: %s", exc)
        if not self.started:
            self.started = True
            await send_error(self._send, exc, retry_after_s=self.limits.retry_after_s)
        raise exc

    async def send(self, message: Message) -> None:
        if self.refusal is not None:
            return  # already answered
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)
