"""Slow, idle and greedy clients against a real uvicorn server (the product's config, small
limits), driven with raw sockets: every wait ends within its timeout, and the body budget answers
503 before a body is read."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import pytest

from lookaside.backbone import VisionTransformer
from service.__main__ import MAX_HEADER_BYTES
from service.app import create_app
from service.deps import AppState
from tests.integration.service.svc_support import settings, tiny
from tests.live_server import serve_in_thread

HEADER_TIMEOUT = 0.5
BODY_TIMEOUT = 1.0
KEEP_ALIVE = 0.5
MAX_CONNECTIONS = 6
BUDGET = 600_000
SLACK = 1.0
"""Seconds allowed past a timeout (thread scheduling on a busy 2-core machine)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, AppState]]:
    backbone: VisionTransformer = tiny()
    app = create_app(
        settings(
            Path(tmp_path_factory.mktemp("store")),
            header_timeout_s=HEADER_TIMEOUT,
            body_timeout_s=BODY_TIMEOUT,
            keep_alive_timeout_s=KEEP_ALIVE,
            max_connections=MAX_CONNECTIONS,
            max_inflight_body_bytes=BUDGET,
            max_media_bytes=500_000,
            retry_after_s=3,
        ),
        backbone=backbone,
    )
    state = app.state.lookaside
    assert isinstance(state, AppState)
    with serve_in_thread(app) as url:
        yield url, int(url.rsplit(":", 1)[1]), state


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def _closed_after(sock: socket.socket, started: float, limit: float) -> float:
    """Seconds from ``started`` until the server closed ``sock`` (read everything it sends)."""
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for more than {limit} s")
    return time.monotonic() - started


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(status_line.split()[1]), headers, body


def _post_head(length: int | None, path: str = "/classify?adapter=esc50") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: audio/wav\r\n{framing}\r\n\r\n"
    ).encode()


def _wait_budget_empty(state: AppState, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while state.body_budget.used != 0:
        assert time.monotonic() < deadline, f"{state.body_budget.used} bytes never given back"
        time.sleep(0.02)


def test_an_idle_new_connection_is_closed_after_the_header_timeout(server: Any) -> None:
    _, port, _ = server
    with ExitStack() as stack:
        started = time.monotonic()
        socks = [stack.enter_context(_connect(port)) for _ in range(20)]
        for sock in socks:
            assert _closed_after(sock, started, HEADER_TIMEOUT + SLACK) >= HEADER_TIMEOUT * 0.9


def test_headers_dribbled_at_4_bytes_a_second_are_cut_off(server: Any) -> None:
    _, port, _ = server
    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Padding: " + b"a" * 64 + b"\r\n\r\n"
    with _connect(port) as sock:
        started = time.monotonic()
        sent = 0
        try:
            while sent < len(request) and time.monotonic() - started < HEADER_TIMEOUT + SLACK:
                sock.send(request[sent : sent + 1])
                sent += 1
                time.sleep(0.25)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < len(request)  # never got to finish its headers
        assert _closed_after(sock, started, HEADER_TIMEOUT + SLACK) < HEADER_TIMEOUT + SLACK


def test_a_kept_alive_connection_is_closed_when_idle_or_dribbling(server: Any) -> None:
    _, port, _ = server
    for dribble in (False, True):
        with _connect(port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, _ = _response(sock)
            assert status == 200
            assert headers.get("connection") != "close"
            answered = time.monotonic()
            if dribble:  # each byte cancelled uvicorn's keep-alive timer; the header timer holds
                try:
                    for byte in b"GET /healthz HTTP/1.1\r\n":
                        sock.send(bytes([byte]))
                        time.sleep(0.2)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            limit = max(KEEP_ALIVE, HEADER_TIMEOUT) + SLACK
            assert _closed_after(sock, answered, limit) < limit


def test_a_body_at_1_byte_a_second_gets_408_and_the_connection_closes(server: Any) -> None:
    _, port, state = server
    with _connect(port) as sock:
        sock.sendall(_post_head(100))
        started = time.monotonic()
        sock.settimeout(0.3)
        data = b""
        while time.monotonic() - started < BODY_TIMEOUT + SLACK and b"\r\n\r\n" not in data:
            try:
                sock.send(b"x")
                data += sock.recv(65536)
            except TimeoutError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(5)
        assert data.startswith(b"HTTP/1.1 408 "), data
        assert time.monotonic() - started < BODY_TIMEOUT + SLACK
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"connection: close" in head.lower()
        while len(body) < int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]):
            body += sock.recv(65536)
        assert "LOOKASIDE_BODY_TIMEOUT_S" in json.loads(body)["detail"]
        assert _closed_after(sock, started, SLACK + BODY_TIMEOUT) < BODY_TIMEOUT + 2 * SLACK
    _wait_budget_empty(state)


def test_a_declared_body_never_sent_gets_408_within_the_timeout(server: Any) -> None:
    _, port, state = server
    with _connect(port) as sock:
        sock.sendall(_post_head(1000))
        started = time.monotonic()
        status, headers, body = _response(sock)
        elapsed = time.monotonic() - started
        assert status == 408
        assert BODY_TIMEOUT * 0.9 <= elapsed < BODY_TIMEOUT + SLACK
        assert headers["connection"] == "close"
        assert isinstance(json.loads(body)["detail"], str)
        assert _closed_after(sock, started, BODY_TIMEOUT + SLACK) < BODY_TIMEOUT + 2 * SLACK
    _wait_budget_empty(state)


def test_the_body_budget_answers_503_before_reading_and_is_given_back(server: Any) -> None:
    _, port, state = server
    with _connect(port) as holder, _connect(port) as second, _connect(port) as chunked:
        holder.sendall(_post_head(400_000) + b"x" * 1000)  # reserves 400,000 bytes, sends 1,000
        deadline = time.monotonic() + 5
        while state.body_budget.used < 400_000:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        second.sendall(_post_head(300_000))  # 700,000 > 600,000: refused unread
        status, headers, body = _response(second)
        assert status == 503
        assert headers["retry-after"] == "3"
        assert headers["connection"] == "close"
        assert "LOOKASIDE_MAX_INFLIGHT_BODY_BYTES" in json.loads(body)["detail"]
        # chunked: counted as it arrives, refused when it would pass the budget
        chunked.sendall(_post_head(None))
        for _ in range(4):
            try:
                chunked.sendall(b"%x\r\n%s\r\n" % (60_000, b"y" * 60_000))
            except (BrokenPipeError, ConnectionResetError):
                break
        status, headers, _ = _response(chunked)
        assert status == 503
        assert headers["retry-after"] == "3"
        assert 400_000 <= state.body_budget.used <= BUDGET
    # every request has ended (refused, or its client went away): every byte is given back
    _wait_budget_empty(state)


def test_a_body_larger_than_the_whole_budget_gets_413(server: Any) -> None:
    _, port, state = server
    with _connect(port) as sock:
        sock.sendall(_post_head(BUDGET + 1))
        status, _, body = _response(sock)
    assert status == 413
    assert "LOOKASIDE_MAX_INFLIGHT_BODY_BYTES" in json.loads(body)["detail"]
    assert state.body_budget.used == 0


def test_requests_beyond_max_connections_get_503_with_retry_after(server: Any) -> None:
    _, port, state = server
    with ExitStack() as stack:
        busy = [stack.enter_context(_connect(port)) for _ in range(MAX_CONNECTIONS)]
        for sock in busy:  # requests in flight: their bodies are awaited
            sock.sendall(_post_head(10))
        time.sleep(0.2)
        with _connect(port) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, body = _response(extra)
        assert status == 503
        assert headers["retry-after"] == "3"
        assert "LOOKASIDE_MAX_CONNECTIONS" in json.loads(body)["detail"]
        for sock in busy:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # the cap frees up as the connections go
        with _connect(port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            if _response(sock)[0] == 200:
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _wait_budget_empty(state)


def test_headers_over_the_size_bound_get_400_and_the_connection_closes(server: Any) -> None:
    _, port, _ = server
    with _connect(port) as sock:
        big = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 1)
        started = time.monotonic()
        with suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(big)  # still incomplete past the bound: h11 gives up
        status, headers, _ = _response(sock)
        assert status == 400
        assert headers["connection"] == "close"
        assert _closed_after(sock, started, SLACK) < SLACK
