"""``lookaside.client`` against scripted answers (``httpx.MockTransport``): what a real server
does not do on demand — answers over the size limit or slower than the timeout, a listing that
never ends, 429/503 with ``Retry-After`` — plus token resolution and error mapping. The real
server's answers are tested in tests/integration/test_client.py."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lookaside.client import (
    ApiError,
    AsyncClient,
    Client,
    ClientError,
    ConnectionFailed,
    InvalidResponse,
    NotFound,
    Overloaded,
    Unauthorized,
    _core,
)

URL = "http://lookaside.test"
INFO = {"version": "0.1.0", "backbone": "vit@abcd1234", "device": "cpu", "dtype": "fp32"}
INFO["engine"] = "torch"


def _client(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> Client:
    return Client(URL, transport=httpx.MockTransport(handler), **kwargs)


@pytest.fixture(autouse=True)
def _no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOKASIDE_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("LOOKASIDE_ADMIN_TOKEN_FILE", raising=False)


class _Chunks(httpx.SyncByteStream):
    def __init__(self, chunks: int, size: int, pause: float = 0.0) -> None:
        self.chunks, self.size, self.pause = chunks, size, pause
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.chunks):
            time.sleep(self.pause)
            self.sent += 1
            yield b" " * self.size


def test_an_answer_over_the_limit_is_refused_unread_or_as_it_passes_it() -> None:
    declared = _client(lambda r: httpx.Response(200, content=b"x" * 2000), max_response_bytes=1000)
    with declared, pytest.raises(InvalidResponse, match="answered 2000 bytes, over the limit 1000"):
        declared.info()
    stream = _Chunks(chunks=100, size=500)  # no Content-Length: counted while read
    chunked = _client(lambda r: httpx.Response(200, stream=stream), max_response_bytes=1000)
    with chunked, pytest.raises(InvalidResponse, match="more than the limit of 1000 bytes"):
        chunked.info()
    assert stream.sent == 3  # stopped at the chunk that passed the limit


def test_an_answer_slower_than_the_timeout_fails_naming_the_url() -> None:
    slow = _client(lambda r: httpx.Response(200, stream=_Chunks(20, 1, pause=0.05)), timeout=0.2)
    started = time.monotonic()
    with slow, pytest.raises(ConnectionFailed, match=f"GET {URL}/info: no answer within 0.2 s"):
        slow.info()
    assert time.monotonic() - started < 0.6

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with _client(refuse) as down, pytest.raises(ConnectionFailed, match=f"could not reach {URL}"):
        down.adapters()


def test_retries_follow_retry_after_and_resend_the_same_body(tmp_path: Path) -> None:
    bodies: list[bytes] = []
    answers = [
        httpx.Response(429, json={"detail": "queue full"}, headers={"Retry-After": "0"}),
        httpx.Response(503, json={"detail": "warming up"}, headers={"Retry-After": "0"}),
        httpx.Response(200, json={"request_id": "r", "duration_s": 1.0, "results": []}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        return answers[len(bodies) - 1]

    clip = io.BytesIO(b"RIFF-clip")
    clip.read(4)  # sent whole each time, as a file object opened for it would be
    with _client(handler, retries=2) as client:
        assert client.classify(clip, "esc50").request_id == "r"
    assert [body.count(b"\r\n\r\nRIFF-clip\r\n") for body in bodies] == [1, 1, 1]
    with _client(lambda r: answers[0], retries=0) as client, pytest.raises(Overloaded) as no_retry:
        client.classify(b"clip", "esc50")
    assert (no_retry.value.status_code, no_retry.value.retry_after) == (429, 0.0)
    bodies.clear()
    pipe = io.BufferedReader(_Unseekable(b"clip"))  # a pipe cannot be sent twice: no retry
    with _client(handler, retries=2) as client, pytest.raises(Overloaded):
        client.classify(pipe, "esc50")
    assert len(bodies) == 1


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_a_wait_over_the_cap_or_without_retries_is_not_waited() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503, json={"detail": "shutting down"}, headers={"Retry-After": "600"})

    started = time.monotonic()
    with _client(handler, retries=5) as client, pytest.raises(Overloaded) as exc:
        client.info()
    assert len(calls) == 1
    assert time.monotonic() - started < 1.0
    assert (exc.value.retry_after, exc.value.detail) == (600.0, "shutting down")
    with pytest.raises(ValueError, match="retries must be 0..5"):
        Client(URL, retries=6)


def test_the_async_client_retries_and_bounds_too() -> None:
    sent = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if len(sent) == 1:
            return httpx.Response(429, json={"detail": "queue full"}, headers={"Retry-After": "0"})
        return httpx.Response(200, json=INFO)

    async def run() -> None:
        transport = httpx.MockTransport(handler)
        async with AsyncClient(URL, retries=1, transport=transport) as client:
            assert (await client.info()).backbone_fingerprint == "abcd1234"
        big = httpx.MockTransport(lambda r: httpx.Response(200, content=b"x" * 5000))
        async with AsyncClient(URL, max_response_bytes=100, transport=big) as client:
            with pytest.raises(InvalidResponse, match="over the limit 100"):
                await client.adapters()

    asyncio.run(run())
    assert len(sent) == 2


def _pages(next_cursor: Callable[[int], str | None]) -> tuple[Client, list[httpx.Request]]:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        n = len(requests)
        summary = {"name": f"a{n}", "active": 1, "versions": [1], "resident": []}
        summary |= {"state": None, "task": None, "method": None}
        page = {"adapters": [summary], "next_cursor": next_cursor(n), "total": 9}
        return httpx.Response(200, json=page)

    return _client(handler), requests


def test_adapters_follows_cursors_and_stops_a_listing_that_loops_or_never_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, requests = _pages(lambda n: f"c{n}" if n < 3 else None)
    assert [a.name for a in client.adapters(page_size=7)] == ["a1", "a2", "a3"]
    assert [dict(r.url.params) for r in requests] == [
        {"limit": "7"},
        {"limit": "7", "cursor": "c1"},
        {"limit": "7", "cursor": "c2"},
    ]
    looping, _ = _pages(lambda n: "same")
    with looping, pytest.raises(InvalidResponse, match="repeated a cursor"):
        looping.adapters()
    monkeypatch.setattr(_core, "MAX_PAGES", 5)
    endless, requests = _pages(lambda n: f"c{n}")
    with endless, pytest.raises(InvalidResponse, match="did not end within 5 pages"):
        endless.adapters()
    assert len(requests) == 6


def _recording(answer: dict[str, Any]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answer)

    return httpx.MockTransport(handler), seen


ACTIVATED = {"name": "esc50", "active": 1, "previous": 2}


def test_the_token_goes_only_with_admin_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("LOOKASIDE_ADMIN_TOKEN_FILE", str(token_file))
    transport, seen = _recording(ACTIVATED)
    Client(URL, transport=transport).activate("esc50", 1)
    monkeypatch.setenv("LOOKASIDE_ADMIN_TOKEN", "from-env")
    Client(URL, transport=transport).activate("esc50", 1)
    Client(URL, token="explicit", transport=transport).activate("esc50", 1)
    assert [r.headers.get("authorization") for r in seen] == [
        "Bearer from-file",
        "Bearer from-env",
        "Bearer explicit",
    ]
    assert json.loads(seen[0].content) == {"version": 1}
    transport, seen = _recording(INFO)
    Client(URL, token="explicit", transport=transport).info()
    assert "authorization" not in seen[0].headers


def test_a_token_file_that_is_no_token_is_refused_at_the_first_admin_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "big"
    big.write_text("x" * 5000)
    monkeypatch.setenv("LOOKASIDE_ADMIN_TOKEN_FILE", str(big))
    transport, seen = _recording(ACTIVATED)
    with pytest.raises(ClientError, match="empty or over 4096 bytes"):
        Client(URL, transport=transport).activate("esc50", 1)
    monkeypatch.setenv("LOOKASIDE_ADMIN_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ClientError, match="cannot read the token file"):
        Client(URL, transport=transport).delete("esc50")
    assert not seen


@pytest.mark.parametrize(
    ("status", "body", "cls", "detail"),
    [
        (403, {"detail": "wrong admin token"}, Unauthorized, "wrong admin token"),
        (404, {"detail": "unknown adapter 'x'", "error": "AdapterNotFound"}, NotFound, None),
        (
            422,
            {"detail": [{"loc": ["query", "limit"], "msg": "too big"}, {"loc": [], "msg": "b"}]},
            ApiError,
            "query.limit: too big; b",
        ),
        (500, "proxy exploded", ApiError, "proxy exploded"),
        (502, "", ApiError, "Bad Gateway"),
    ],
)
def test_error_answers_become_their_class_with_the_servers_detail(
    status: int, body: Any, cls: type[ApiError], detail: str | None
) -> None:
    content = json.dumps(body).encode() if isinstance(body, dict) else body.encode()
    with (
        _client(lambda r: httpx.Response(status, content=content)) as client,
        pytest.raises(cls) as exc,
    ):
        client.adapter("x")
    want = detail or body["detail"]
    assert (exc.value.status_code, exc.value.detail) == (status, want)
    assert str(exc.value) == f"the server answered {status}: {want}"


def test_an_answer_that_is_not_the_schema_is_refused() -> None:
    with (
        _client(lambda r: httpx.Response(200, content=b"<html>")) as client,
        pytest.raises(InvalidResponse, match="not JSON"),
    ):
        client.info()
    with (
        _client(lambda r: httpx.Response(200, json={"version": 1})) as client,
        pytest.raises(InvalidResponse, match="not a Info: 5 problem"),
    ):
        client.info()


def test_rollback_needs_an_older_version() -> None:
    version = {"version": 1, "active": True, "state": "ready", "resident": True, "requests": 0}
    version |= {"task": "t", "task_type": "multiclass", "method": "lora", "config": {}}
    version |= {"labels": [], "metrics": {}, "backbone": "vit@abcd1234", "weights_sha256": "0"}
    version |= {"created": "2026-01-01T00:00:00Z"}
    info = {"name": "esc50", "active": 1, "state": "ready", "requests": 0, "versions": [version]}
    transport, seen = _recording(info)
    with pytest.raises(ClientError, match="no version older than the active esc50@1"):
        Client(URL, transport=transport).rollback("esc50")
    assert [r.method for r in seen] == ["GET"]  # nothing was activated


def test_a_request_names_what_it_sends() -> None:
    transport, seen = _recording({"name": "a b", "deleted": [3], "active": 1})
    client = Client(URL, transport=transport)
    client.delete("a b", 3, force=True)
    client.delete("a b")
    with pytest.raises(ClientError, match="name an adapter"):
        client.classify(b"x", [" ", ""])
    assert [(r.method, str(r.url)) for r in seen] == [
        ("DELETE", f"{URL}/adapters/a%20b/versions/3?force=true"),
        ("DELETE", f"{URL}/adapters/a%20b"),
    ]
