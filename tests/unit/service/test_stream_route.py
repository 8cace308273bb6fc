"""GET /stream's refusals in process (starlette's TestClient): each closes with its code after a
StreamError naming the same code. The protocol through a real server is tested in
tests/integration/service/test_stream.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from lookaside.errors import LookasideError
from lookaside.features import FeatureConfig
from lookaside.stream_protocol import CloseCode
from service.app import create_app
from service.deps import AppState
from service.errors import NotReady
from service.routes.stream import live_sessions
from tests.integration.service.svc_support import make_checkpoint, put_in_store, settings, tiny

FRAME_LIMIT = 8192


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    store: Path = tmp_path_factory.mktemp("store")
    backbone = tiny()
    put_in_store(store, make_checkpoint(backbone, "speech"))
    fast = FeatureConfig(target_frames=64, window_hop_frames=5)  # its own hop: 0.05 s
    put_in_store(store, make_checkpoint(backbone, "fasthop", method="lora", features=fast))
    app = create_app(
        settings(
            store,
            warmup=False,
            stream_idle_timeout_s=0.5,
            stream_open_timeout_s=0.5,
            stream_max_frame_bytes=FRAME_LIMIT,
        ),
        backbone=backbone,
    )
    with TestClient(app) as test_client:
        yield test_client


def _refused(client: TestClient, first: str | bytes | None) -> tuple[dict[str, Any], int]:
    """(the StreamError, the close code) of a session opened with ``first``."""
    with client.websocket_connect("/stream") as ws:
        if isinstance(first, bytes):
            ws.send_bytes(first)
        elif first is not None:
            ws.send_text(first)
        error = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    return error, closed.value.code


OPEN = {"adapters": ["speech"], "sample_rate": 16000, "format": "pcm16"}


@pytest.mark.parametrize(
    ("first", "code", "reason"),
    [
        ("not json", CloseCode.BAD_REQUEST, "bad_opening"),
        (json.dumps({**OPEN, "sample_rate": 10}), CloseCode.BAD_REQUEST, "bad_opening"),
        (json.dumps({**OPEN, "extra": 1}), CloseCode.BAD_REQUEST, "bad_opening"),
        (b"\x00\x00", CloseCode.BAD_REQUEST, "bad_opening"),
        (json.dumps({**OPEN, "hop_s": 0.05}), CloseCode.BAD_REQUEST, "bad_hop"),
        (json.dumps({**OPEN, "hop_s": 2.0}), CloseCode.BAD_REQUEST, "bad_hop"),
        (json.dumps({**OPEN, "adapters": ["nope"]}), CloseCode.NOT_FOUND, "unknown_adapter"),
        (json.dumps({**OPEN, "adapters": ["speech@9"]}), CloseCode.NOT_FOUND, "unknown_adapter"),
        (None, CloseCode.IDLE, "idle"),
        (json.dumps({**OPEN, "adapters": ["speech", "fasthop"]}), CloseCode.BAD_REQUEST, "bad_hop"),
        (json.dumps({**OPEN, "sample_rate": 96_000}), CloseCode.BAD_REQUEST, "bad_rate"),
        ("[" * 200_000, CloseCode.TOO_BIG, "frame_too_big"),
        ("[" * 8000, CloseCode.BAD_REQUEST, "bad_opening"),
        (b"\x00" * (FRAME_LIMIT + 2), CloseCode.TOO_BIG, "frame_too_big"),
    ],
)
def test_bad_openings_close_with_their_code(
    client: TestClient, first: str | bytes | None, code: int, reason: str
) -> None:
    error, closed_with = _refused(client, first)
    assert (error["type"], error["code"], error["reason"], closed_with) == (
        "error",
        code,
        reason,
        code,
    )
    assert error["message"]


def test_an_adapter_hop_under_the_minimum_is_named_with_the_setting(client: TestClient) -> None:
    error, _ = _refused(client, json.dumps({**OPEN, "adapters": ["fasthop"]}))
    assert "fasthop@1" in error["message"]
    assert "stream_min_hop_s" in error["message"]


def test_the_opening_waits_stream_open_timeout_s(client: TestClient) -> None:
    error, _ = _refused(client, None)
    assert "stream_open_timeout_s" in error["message"]


def _state(client: TestClient) -> AppState:
    state = client.app.state.lookaside  # type: ignore[attr-defined]
    assert isinstance(state, AppState)
    return state


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (LookasideError("the adapter failed to load: bad weights"), 1011, "internal"),
        (NotReady("the engine is stalled"), 4503, "not_ready"),
    ],
)
def test_a_server_error_resolving_an_adapter_is_not_a_bad_request(
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    error: LookasideError,
    code: int,
    reason: str,
) -> None:
    async def failing(ref: str, timeout: float | None = None) -> Any:
        raise error

    monkeypatch.setattr(_state(client).registry, "acquire", failing)
    got, closed_with = _refused(client, json.dumps(OPEN))
    assert (got["code"], got["reason"], closed_with) == (code, reason, code)
    assert str(error) in got["message"]


def test_every_adapter_of_an_opening_shares_one_deadline(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = _state(client).registry
    assert registry is not None
    real = registry.acquire
    timeouts: list[float] = []

    async def timed(ref: str, timeout: float | None = None) -> Any:
        assert timeout is not None
        timeouts.append(timeout)
        await asyncio.sleep(0.05)
        return await real(ref, timeout=timeout)

    monkeypatch.setattr(registry, "acquire", timed)
    with client.websocket_connect("/stream") as ws:
        ws.send_text(json.dumps({**OPEN, "adapters": ["speech", "speech@1"]}))
        assert ws.receive_json()["type"] == "ready"
    limit = _state(client).settings.request_timeout_s + 0.5  # + stream_open_timeout_s
    assert len(timeouts) == 2, timeouts
    assert limit >= timeouts[0] > timeouts[1] + 0.04, timeouts


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [
        (b"", 4400, "empty_frame"),
        ("[" * 5000, 4400, "bad_message"),
        (b"\x00" * (FRAME_LIMIT + 2), 1009, "frame_too_big"),
    ],
)
def test_frames_refused_mid_session_without_a_server_error(
    client: TestClient,
    caplog: pytest.LogCaptureFixture,
    frame: str | bytes,
    code: int,
    reason: str,
) -> None:
    caplog.set_level(logging.WARNING)
    with client.websocket_connect("/stream") as ws:
        ws.send_text(json.dumps(OPEN))
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(b"\x00" * 3200)
        if isinstance(frame, bytes):
            ws.send_bytes(frame)
        else:
            ws.send_text(frame)
        error = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert (error["code"], error["reason"], closed.value.code) == (code, reason, code)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_unknown_adapter_lists_what_exists(client: TestClient) -> None:
    error, _ = _refused(client, json.dumps({**OPEN, "adapters": ["speech", "nope"]}))
    assert "speech" in error["message"]


def test_a_partial_sample_frame_closes_with_4400(client: TestClient) -> None:
    with client.websocket_connect("/stream") as ws:
        ws.send_text(json.dumps({**OPEN, "channels": 2}))
        ready = ws.receive_json()
        assert ready["type"] == "ready"
        assert ready["tracks"][0]["adapters"] == [{"adapter": "speech", "version": 1}]
        ws.send_bytes(b"\x00" * 6)  # 1.5 sample frames of 2 channels x 2 bytes
        error = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert (error["code"], error["reason"], closed.value.code) == (4400, "partial_frame", 4400)
    metrics = client.get("/metrics").text
    assert 'lookaside_stream_sessions_closed_total{code="4400"}' in metrics
    assert "lookaside_stream_sessions 0.0" in metrics


def test_shutdown_closes_live_sessions_with_1001_and_frees_their_slots(
    client: TestClient,
) -> None:
    state = client.app.state.lookaside  # type: ignore[attr-defined]
    live = live_sessions(state)
    with client.websocket_connect("/stream") as ws:
        ws.send_text(json.dumps(OPEN))
        assert ws.receive_json()["type"] == "ready"
        assert len(live) == 1
        portal = client.portal
        assert portal is not None
        portal.call(live.close_all, 5.0)  # what the lifespan's shutdown runs first
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert (closed.value.code, closed.value.reason) == (1001, "shutting_down")
    assert len(live) == 0
    live.closing = False  # the module's other tests keep using this app
