"""GET /stream's refusals in process (starlette's TestClient): each closes with its code after a
StreamError naming the same code. The protocol through a real server is tested in
tests/integration/service/test_stream.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from lookaside.stream_protocol import CloseCode
from service.app import create_app
from service.routes.stream import live_sessions
from tests.integration.service.svc_support import make_checkpoint, put_in_store, settings, tiny


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    store: Path = tmp_path_factory.mktemp("store")
    backbone = tiny()
    put_in_store(store, make_checkpoint(backbone, "speech"))
    app = create_app(settings(store, warmup=False, stream_idle_timeout_s=0.5), backbone=backbone)
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
