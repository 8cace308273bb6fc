"""BodyLimits (in-flight byte budget, whole-body deadline), the log redaction and the OpenAPI
post-processing, driven directly through ASGI with counted receives (no server, no sleeps
beyond the tiny deadline)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from service.http_contract import AllowMethods, complete_openapi
from service.http_limits import CLIENT_GONE_KEY, BodyLimits, InflightBytes
from service.logging import RedactQueryFilter, redact_queries

App = Callable[[Scope, Receive, Send], Awaitable[None]]


def _scope(length: int | None, *, chunked: bool = False, method: str = "POST") -> Scope:
    headers = []
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    return {"type": "http", "method": method, "path": "/classify", "headers": headers}


class Client:
    """A client whose body arrives in ``chunks`` (then waits forever if ``stall``)."""

    def __init__(self, chunks: list[bytes], *, stall: bool = False) -> None:
        self.chunks = list(chunks)
        self.stall = stall
        self.receives = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        self.receives += 1
        if not self.chunks:
            if self.stall:
                await asyncio.Event().wait()
            return {"type": "http.disconnect"}
        chunk = self.chunks.pop(0)
        more = bool(self.chunks) or self.stall
        return {"type": "http.request", "body": chunk, "more_body": more}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.sent  # exactly one answer
        return int(starts[0]["status"])

    def header(self, name: bytes) -> bytes | None:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return dict(start["headers"]).get(name)

    @property
    def detail(self) -> str:
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        detail = json.loads(body)["detail"]
        assert isinstance(detail, str)
        return detail


def reader(seen: list[int], budget: InflightBytes) -> App:
    """An app that reads the whole body, noting the budget in use after each chunk, then 200."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(budget.used)
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def _limits(app: App, budget: InflightBytes, timeout: float = 5.0) -> BodyLimits:
    return BodyLimits(app, budget=budget, body_timeout_s=timeout, retry_after_s=7)


def test_a_declared_body_is_reserved_while_the_request_runs_then_given_back() -> None:
    budget = InflightBytes(1000)
    seen: list[int] = []
    client = Client([b"a" * 300, b"b" * 300])
    asyncio.run(_limits(reader(seen, budget), budget)(_scope(600), client.receive, client.send))
    assert client.status == 200
    assert seen == [600, 600]
    assert budget.used == 0


def test_a_declared_body_over_the_remaining_budget_is_refused_unread() -> None:
    budget = InflightBytes(1000)
    budget.take(500)  # another request holds 500
    seen: list[int] = []
    client = Client([b"a" * 600])
    asyncio.run(_limits(reader(seen, budget), budget)(_scope(600), client.receive, client.send))
    assert client.status == 503
    assert client.header(b"retry-after") == b"7"
    assert client.header(b"connection") == b"close"
    assert "LOOKASIDE_MAX_INFLIGHT_BODY_BYTES" in client.detail
    assert (client.receives, seen) == (0, [])  # not a byte read, the app never called
    assert budget.used == 500


def test_a_body_over_the_whole_budget_is_413_not_503() -> None:
    budget = InflightBytes(1000)
    client = Client([b"a" * 1001])
    asyncio.run(_limits(reader([], budget), budget)(_scope(1001), client.receive, client.send))
    assert client.status == 413
    assert client.receives == 0


def test_a_chunked_body_is_counted_as_it_arrives_and_refused_when_it_would_pass() -> None:
    budget = InflightBytes(1000)
    budget.take(400)
    seen: list[int] = []
    client = Client([b"a" * 300, b"b" * 300, b"c" * 300])
    app = _limits(reader(seen, budget), budget)
    asyncio.run(app(_scope(None, chunked=True), client.receive, client.send))
    assert seen == [700, 1000]  # the third chunk would make 1,300 of 1,000: refused
    assert client.status == 503  # the app's own answer after the refusal is dropped
    assert budget.used == 400


def test_a_chunked_body_within_the_budget_is_counted_then_given_back() -> None:
    budget = InflightBytes(1000)
    seen: list[int] = []
    client = Client([b"a" * 300, b"b" * 300])
    asyncio.run(
        _limits(reader(seen, budget), budget)(
            _scope(None, chunked=True), client.receive, client.send
        )
    )
    assert (client.status, seen, budget.used) == (200, [300, 600], 0)


def test_bytes_are_given_back_when_the_app_fails_or_the_client_leaves() -> None:
    budget = InflightBytes(1000)

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise RuntimeError("boom")

    client = Client([b"a" * 100, b"b" * 100])
    with pytest.raises(RuntimeError):
        asyncio.run(_limits(failing, budget)(_scope(200), client.receive, client.send))
    assert budget.used == 0

    gone = Client([b"a" * 100])  # then http.disconnect
    seen: list[int] = []
    asyncio.run(
        _limits(reader(seen, budget), budget)(_scope(None, chunked=True), gone.receive, gone.send)
    )
    assert budget.used == 0


def test_a_client_leaving_mid_body_is_not_a_server_error() -> None:
    """Starlette raises ClientDisconnect into the route when the client goes: nobody is left to
    answer, so it is marked (metrics count 499) and not re-raised (no 500 trace in the log)."""
    budget = InflightBytes(1000)

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.requests import Request

        async for _ in Request(scope, receive).stream():
            pass
        raise AssertionError("the stream should have raised ClientDisconnect")

    gone = Client([])
    messages: list[Message] = [
        {"type": "http.request", "body": b"a" * 100, "more_body": True},
        {"type": "http.disconnect"},  # before the declared 500 bytes
    ]

    async def leaving() -> Message:
        return messages.pop(0)

    scope = _scope(500)
    asyncio.run(_limits(streaming, budget)(scope, leaving, gone.send))
    assert scope[CLIENT_GONE_KEY] is True
    assert gone.sent == []  # nothing sent to a client that is gone
    assert budget.used == 0


def test_a_stalled_body_gets_408_once_and_the_app_stops_reading() -> None:
    budget = InflightBytes(1000)
    seen: list[int] = []
    client = Client([b"a" * 10], stall=True)
    asyncio.run(
        _limits(reader(seen, budget), budget, timeout=0.05)(
            _scope(100), client.receive, client.send
        )
    )
    assert client.status == 408
    assert client.header(b"connection") == b"close"
    assert "LOOKASIDE_BODY_TIMEOUT_S" in client.detail
    assert seen == [100]  # the first chunk arrived; the wait for the second was cut
    assert budget.used == 0


def test_requests_without_a_body_pass_untouched() -> None:
    budget = InflightBytes(1000)
    calls: list[Receive] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(receive)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = Client([])
    asyncio.run(_limits(app, budget)(_scope(None, method="GET"), client.receive, client.send))
    assert calls == [client.receive]  # the client's own receive: no wrapper, no deadline
    assert client.status == 204


def test_query_strings_are_redacted_from_log_lines() -> None:
    line = '127.0.0.1:5 - "POST /classify?adapter=a&token=SECRET HTTP/1.1" 200'
    assert redact_queries(line) == '127.0.0.1:5 - "POST /classify?<redacted> HTTP/1.1" 200'
    assert redact_queries("unknown adapter 'x'; did you mean 'y'?") == (
        "unknown adapter 'x'; did you mean 'y'?"
    )
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/adapters?cursor=abc&token=SECRET", "1.1", 200), None,
    )  # fmt: skip
    assert RedactQueryFilter().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "GET /adapters?<redacted> HTTP/1.1" 200'


def test_openapi_422_is_the_error_body_and_limits_are_declared() -> None:
    validation = {"$ref": "#/components/schemas/HTTPValidationError"}
    doc: dict[str, Any] = {
        "paths": {
            "/a": {
                "get": {"responses": {"200": {}, "422": {"content": {"application/json": {
                    "schema": validation}}, "description": "Validation Error"}}},
                "post": {"requestBody": {}, "responses": {"201": {}}},
            }
        },
        "components": {"schemas": {"HTTPValidationError": {}, "ValidationError": {}}},
    }  # fmt: skip
    out = complete_openapi(doc)
    get, post = out["paths"]["/a"]["get"], out["paths"]["/a"]["post"]
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    assert get["responses"]["422"]["content"]["application/json"]["schema"] == ref
    assert set(get["responses"]) == {"200", "400", "422", "503"}
    assert set(post["responses"]) == {"201", "400", "408", "413", "503"}
    assert set(out["components"]["schemas"]) == {"ErrorBody"}


def test_options_and_405_list_every_method_of_the_path() -> None:
    doc = {"paths": {"/adapters/{name}": {"get": {}, "delete": {}}, "/healthz": {"get": {}}}}

    async def router(scope: Scope, receive: Receive, send: Send) -> None:  # Starlette's 405
        headers = [(b"allow", b"GET")]
        await send({"type": "http.response.start", "status": 405, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    app = AllowMethods(router, openapi=lambda: doc)
    for method, status in (("OPTIONS", 204), ("PUT", 405)):
        client = Client([])
        scope = {"type": "http", "method": method, "path": "/adapters/esc50", "headers": []}
        asyncio.run(app(scope, client.receive, client.send))
        assert client.status == status
        assert client.header(b"allow") == b"DELETE, GET, OPTIONS"
    client = Client([])  # not a documented path: left to the router
    scope = {"type": "http", "method": "OPTIONS", "path": "/static/x.js", "headers": []}
    asyncio.run(app(scope, client.receive, client.send))
    assert client.status == 405
