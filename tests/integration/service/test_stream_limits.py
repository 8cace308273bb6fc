"""``GET /stream``'s limits through a real server: each refusal sends StreamError with its close
code and a message, then closes with that code (and the error's reason): a bad opening, an
unknown adapter, an audio-visual adapter, malformed frames, too many sessions, idle, too long,
ahead of real time, a trickle slower than real time, a frame over the size limit (1009), a
client that never reads; windows over the pending bound are answered ``dropped``, in order, and
counted, and a burst of them on one track does not close a reading client; a server that stops
closes its sessions with 1001 and counts them so."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest
from websockets.exceptions import ConnectionClosed

from lookaside.backbone import VisionTransformer
from lookaside.features import FeatureConfig
from service.app import create_app
from tests.integration.service.av_support import AV_BACKBONE, av_checkpoint, tiny_av
from tests.integration.service.stream_support import (
    Session,
    assert_refused,
    changing_signal,
    expected_windows,
    frame_bytes_of,
    metric,
    open_ws,
    ready,
    session,
    wait_metric,
)
from tests.integration.service.svc_support import (
    SHORT_FEATURES,
    make_checkpoint,
    put_in_store,
    settings,
)
from tests.live_server import serve_in_thread

RATE = 16_000
OPEN = {"adapters": ["kws"], "sample_rate": RATE, "format": "f32"}
FRAME_LIMIT = 65_536


def _serve(store: Path, model: VisionTransformer, **overrides: Any) -> Iterator[str]:
    with serve_in_thread(create_app(settings(store, **overrides), backbone=model)) as url:
        yield url


def _store(tmp_path_factory: pytest.TempPathFactory, backbone: VisionTransformer) -> Path:
    store = tmp_path_factory.mktemp("stream") / "store"
    put_in_store(store, make_checkpoint(backbone, "kws", method="lora", features=SHORT_FEATURES))
    return store


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One session at a time, 1 s idle timeout, 1 s ahead of real time, 64 KiB frames; kws (an
    audio adapter) and avx (audio-visual) on the two-stream tiny backbone."""
    backbone = tiny_av()
    store = _store(tmp_path_factory, backbone)
    put_in_store(store, av_checkpoint(backbone, "avx", seed=1))
    yield from _serve(
        store,
        backbone,
        backbone=AV_BACKBONE,
        stream_max_sessions=1,
        stream_idle_timeout_s=1.0,
        stream_max_ahead_s=1.0,
        stream_max_frame_bytes=FRAME_LIMIT,
        stream_open_timeout_s=1.0,
    )


@pytest.fixture
def idle_strict(strict: str) -> str:
    """The strict server once the previous test's session has ended there (it allows one)."""
    deadline = time.monotonic() + 5.0
    while metric(strict, "lookaside_stream_sessions") not in (0.0, None):
        assert time.monotonic() < deadline, "a session of an earlier test is still live"
        time.sleep(0.05)
    return strict


def _f32(seconds: float, seed: int = 0) -> bytes:
    return frame_bytes_of(changing_signal(seconds, RATE, 1, seed=seed))


# -- the opening message ----------------------------------------------------------------------
BAD_OPENINGS: dict[str, str | bytes] = {
    "not_json": "hello",
    "json_list": "[1, 2]",
    "no_sample_rate": json.dumps({"adapters": ["kws"]}),
    "no_adapters": json.dumps({**OPEN, "adapters": []}),
    "unknown_field": json.dumps({**OPEN, "colour": "red"}),
    "bad_format": json.dumps({**OPEN, "format": "mp3"}),
    "nine_channels": json.dumps({**OPEN, "channels": 9}),
    "rate_too_low": json.dumps({**OPEN, "sample_rate": 10}),
    "hop_under_min": json.dumps({**OPEN, "hop_s": 0.05}),
    "top_k_zero": json.dumps({**OPEN, "top_k": 0}),
    "end_first": json.dumps({"type": "end"}),
    "binary_first": _f32(0.1),
}


@pytest.mark.parametrize("case", list(BAD_OPENINGS))
def test_bad_opening_is_refused_with_4400(idle_strict: str, case: str) -> None:
    with session(idle_strict, None) as s:
        s.ws.send(BAD_OPENINGS[case])
        assert_refused(s, 4400)
        assert not s.of_type("ready")


@pytest.mark.parametrize(
    ("adapter", "code", "word"),
    [("nope", 4404, "nope"), ("kws@7", 4404, "kws"), ("avx", 4415, "avx")],
)
def test_unknown_or_audio_visual_adapter_is_refused(
    idle_strict: str, adapter: str, code: int, word: str
) -> None:
    with session(idle_strict, {**OPEN, "adapters": ["kws", adapter]}) as s:
        assert_refused(s, code, word)


# -- malformed frames -------------------------------------------------------------------------
def _nan_frame() -> bytes:
    x = changing_signal(0.1, RATE, 1, seed=2)
    x[700, 0] = np.nan
    return frame_bytes_of(x)


def _inf_frame() -> bytes:
    x = changing_signal(0.1, RATE, 1, seed=3)
    x[5, 0] = np.inf
    return frame_bytes_of(x)


MALFORMED: dict[str, tuple[dict[str, Any], str | bytes]] = {
    "f32_partial_sample": (OPEN, b"\x00" * 6),
    "pcm16_stereo_partial_frame": ({**OPEN, "format": "pcm16", "channels": 2}, b"\x00" * 6),
    "f32_nan": (OPEN, _nan_frame()),
    "f32_inf": (OPEN, _inf_frame()),
    "text_not_end": (OPEN, "hello"),
    "json_not_end": (OPEN, json.dumps({"type": "pause"})),
    "empty_frame": (OPEN, b""),
    "deeply_nested_text": (OPEN, "[" * 60_000),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_frame_mid_stream_is_refused_with_4400(idle_strict: str, case: str) -> None:
    opening, frame = MALFORMED[case]
    with session(idle_strict, opening) as s:
        ready(s)
        s.ws.send(b"\x00" * 3200)  # 0.1 s (f32 mono) or 0.05 s (pcm16 stereo) of silence first
        s.ws.send(frame)
        assert_refused(s, 4400)


# -- sessions, time -----------------------------------------------------------------------
def test_one_session_over_the_cap_is_refused_and_the_first_goes_on(idle_strict: str) -> None:
    with session(idle_strict, OPEN) as first:
        ready(first)
        with session(idle_strict, OPEN) as second:
            assert_refused(second, 4429)
        first.ws.send(_f32(0.9))
        first.end()
    assert first.close_code == 1000, (first.close_code, first.types())
    assert first.types() == ["ready", "window", "window", "end"], first.types()


def test_idle_session_and_silent_connection_are_closed_with_4408(idle_strict: str) -> None:
    started = time.monotonic()
    with session(idle_strict, OPEN) as s:
        ready(s)
        s.ws.send(_f32(0.1))
        assert_refused(s, 4408)
    assert 0.9 < time.monotonic() - started < 10
    started = time.monotonic()
    with session(idle_strict, None) as s:  # never sends its opening message
        assert_refused(s, 4408)
    assert 0.9 < time.monotonic() - started < 10


def test_a_trickle_slower_than_real_time_is_closed_with_4408(idle_strict: str) -> None:
    """0.1 s of audio every 0.3 s keeps the idle timer (1 s) alive but falls 1 s behind real
    time within ~1.5 s: closed as ``starved``, not served for ever."""
    started = time.monotonic()
    with session(idle_strict, OPEN) as s:
        ready(s)
        for _ in range(30):  # 9 s at most
            try:
                s.ws.send(_f32(0.1))
            except ConnectionClosed:
                break
            s.drain()
            if s.close_code is not None:
                break
            time.sleep(0.3)
        err = assert_refused(s, 4408, "stream_idle_timeout_s")
    assert err["reason"] == "starved", err
    assert time.monotonic() - started < 5


def test_sending_ahead_of_real_time_is_refused_with_4430(idle_strict: str) -> None:
    data = _f32(3.0)
    with session(idle_strict, OPEN) as s:
        ready(s)
        s.send_until_closed(data, 16_000)  # 0.25 s frames, as fast as it can
        assert_refused(s, 4430)
    # refused at the frame that put it over 1 s ahead (a slow machine may take one more): at
    # most 1.5 s received, which holds 2 windows of 0.645 s at a 0.64 s hop
    assert len(s.of_type("window")) <= 2, s.types()


def test_a_frame_over_the_size_limit_is_closed_with_1009(idle_strict: str) -> None:
    opening = {**OPEN, "sample_rate": 48_000}  # 64 KiB of f32 is 0.34 s: not ahead
    with session(idle_strict, opening) as s:
        ready(s)
        s.ws.send(b"\x00" * FRAME_LIMIT)  # at the limit: accepted
        s.end()
    assert s.close_code == 1000, (s.close_code, s.types())
    assert s.of_type("end")[0]["seconds"] == pytest.approx(FRAME_LIMIT / 4 / 48_000)
    with session(idle_strict, opening) as s:
        ready(s)
        s.ws.send(b"\x00" * (FRAME_LIMIT + 4))
        s.until_close()
    assert s.close_code == 1009, (s.close_code, s.close_reason, s.types())


# -- too long, not reading (servers of their own) ------------------------------------------
@pytest.fixture(scope="module")
def short_sessions(
    tmp_path_factory: pytest.TempPathFactory, svc_backbone: VisionTransformer
) -> Iterator[str]:
    """Sessions of at most 1 s of audio (sent as fast as the client likes)."""
    store = _store(tmp_path_factory, svc_backbone)
    yield from _serve(store, svc_backbone, stream_max_seconds=1.0, stream_max_ahead_s=1000.0)


def test_more_audio_than_max_seconds_is_refused_with_4413(short_sessions: str) -> None:
    data = _f32(2.0)
    with session(short_sessions, OPEN) as s:
        ready(s)
        s.send_until_closed(data, 16_000)  # 0.25 s frames, as fast as it can
        assert_refused(s, 4413, "stream_max_seconds")
    assert len(s.of_type("window")) <= 1  # 1 s makes one 0.645 s window (hop 0.64 s)


WIDE_LABELS = [
    f"{i:04d}-" + "".join(chr(97 + (i * 7 + j * 13) % 26) for j in range(240)) for i in range(1000)
]
"""1000 labels of 245 characters: each window message carries ~0.3 MB with top_k=1000."""


@pytest.fixture(scope="module")
def unsent_two(
    tmp_path_factory: pytest.TempPathFactory, svc_backbone: VisionTransformer
) -> Iterator[str]:
    """At most 2 answered windows may wait for the client; a 1000-label adapter ("wide"). The
    idle timeout (12 s; a send that waits that long also ends a session) is longer than the test
    waits (8 s), so only the unsent bound can close the session in time."""
    store = tmp_path_factory.mktemp("unread") / "store"
    wide = make_checkpoint(
        svc_backbone, "wide", method="linear", labels=WIDE_LABELS, features=SHORT_FEATURES
    )
    put_in_store(store, wide)
    yield from _serve(
        store,
        svc_backbone,
        stream_max_unsent=2,
        stream_max_ahead_s=1000.0,
        stream_max_pending_windows=64,
        stream_idle_timeout_s=12.0,
    )


def test_a_client_that_never_reads_is_closed_with_4431(unsent_two: str) -> None:
    opening = {"adapters": ["wide"], "sample_rate": RATE, "format": "f32", "hop_s": 0.1}
    opening["top_k"] = 1000
    data = _f32(6.0)  # 54 windows, ~16 MB of results: far more than the socket buffers hold
    started = time.monotonic()
    with open_ws(unsent_two, small_receive_buffer=True) as ws:
        s = Session(ws)
        ws.send(json.dumps(opening))
        sender_done = threading.Event()

        def send_all() -> None:  # never reads; a daemon, so a send stuck forever cannot hang
            for start in range(0, len(data), 32_000):
                ws.send(data[start : start + 32_000])
            sender_done.set()

        threading.Thread(target=send_all, daemon=True).start()
        assert sender_done.wait(10), "the server stopped reading frames while results waited"
        closes = wait_metric(
            unsent_two, "lookaside_stream_sessions_closed_total", 1.0, timeout=8, code="4431"
        )
        waited = time.monotonic() - started
        if closes == 1.0:
            s.until_close()  # read what the socket buffers held, then the close
    assert closes == 1.0, (
        f"no session closed with 4431 within {waited:.1f} s of its start (live sessions: "
        f"{metric(unsent_two, 'lookaside_stream_sessions')})"
    )
    assert wait_metric(unsent_two, "lookaside_stream_sessions", 0.0) == 0.0
    assert s.types()[:1] == ["ready"], s.types()[:3]
    assert len(s.of_type("window")) < 54, "every window reached a client that did not read"
    # the error and close frame reach it only if they fit behind the windows the socket
    # buffers hold within the server's bounded send; else the connection just ends (1006)
    if s.close_code != 1006:
        assert_refused(s, 4431)


# -- dropped windows --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_pending(
    tmp_path_factory: pytest.TempPathFactory, svc_backbone: VisionTransformer
) -> Iterator[str]:
    """One window of a session in the engine at a time; clients may send far ahead."""
    store = _store(tmp_path_factory, svc_backbone)
    yield from _serve(store, svc_backbone, stream_max_pending_windows=1, stream_max_ahead_s=1000.0)


def test_windows_over_the_pending_bound_are_dropped_in_order_and_counted(
    one_pending: str,
) -> None:
    before = metric(one_pending, "lookaside_stream_dropped_windows_total", reason="overloaded")
    opening = {**OPEN, "hop_s": 0.1}
    samples = changing_signal(5.0, RATE, 1, seed=4)
    cuts = expected_windows(samples.shape[0], 64, 10, RATE)
    with session(one_pending, opening) as s:
        ready(s)
        data = frame_bytes_of(samples)
        for start in range(0, len(data), 64_000):  # 1 s frames: each cuts ~10 windows at once
            s.ws.send(data[start : start + 64_000])
        s.end()
    assert s.close_code == 1000, (s.close_code, s.close_reason, s.types()[-3:])
    answers = [m for m in s.messages if m["type"] in ("window", "dropped")]
    assert [m["index"] for m in answers] == list(range(len(cuts)))  # each once, in order
    for m, (start, stop) in zip(answers, cuts, strict=True):
        assert (m["start_s"], m["end_s"]) == pytest.approx((start / RATE, stop / RATE), abs=1e-6)
    dropped = s.of_type("dropped")
    assert dropped, "no window was dropped with one pending window allowed"
    assert s.of_type("window"), "every window was dropped"
    assert all(m["reason"] == "overloaded" and m["message"] for m in dropped), dropped[:2]
    (end,) = s.of_type("end")
    assert (end["windows"], end["dropped"]) == (len(s.of_type("window")), len(dropped))
    after = metric(one_pending, "lookaside_stream_dropped_windows_total", reason="overloaded")
    assert after == (before or 0.0) + len(dropped)


# -- a burst on two tracks; shutdown ----------------------------------------------------------
@pytest.fixture(scope="module")
def two_tracks(
    tmp_path_factory: pytest.TempPathFactory, svc_backbone: VisionTransformer
) -> Iterator[str]:
    """The default stream limits; kws (0.645 s windows) and kws2 (0.485 s): two tracks."""
    store = _store(tmp_path_factory, svc_backbone)
    kws2 = make_checkpoint(
        svc_backbone, "kws2", method="lora", features=FeatureConfig(target_frames=48)
    )
    put_in_store(store, kws2)
    yield from _serve(store, svc_backbone)


def test_a_burst_dropped_behind_a_pending_window_does_not_close_a_reading_client(
    two_tracks: str,
) -> None:
    """4.9 s in one frame (under stream_max_ahead_s) at hop 0.1 s cuts ~90 windows at once: 8
    go to the engine, the rest are dropped ``overloaded`` at once, most of them behind a window
    still pending. A client that reads gets every one, in order per track, and its end."""
    samples = changing_signal(4.9, RATE, 1, seed=5)
    opening = {**OPEN, "adapters": ["kws", "kws2"], "hop_s": 0.1}
    with session(two_tracks, opening) as s:
        tracks = ready(s)["tracks"]
        s.ws.send(frame_bytes_of(samples))
        s.end()
    assert s.close_code == 1000, (s.close_code, s.close_reason, s.of_type("error"))
    assert len(tracks) == 2, tracks
    answers = [m for m in s.messages if m["type"] in ("window", "dropped")]
    for track in tracks:
        frames = 64 if track["adapters"][0]["adapter"] == "kws" else 48
        want = expected_windows(samples.shape[0], frames, 10, RATE)
        got = [m["index"] for m in answers if m["track"] == track["track"]]
        assert got == list(range(len(want))), (track, got)
    assert s.of_type("window"), "every window was dropped"
    (end,) = s.of_type("end")
    assert end["windows"] + end["dropped"] == len(answers)


def test_stopping_the_server_closes_a_live_session_with_1001_counted_as_1001(
    tmp_path_factory: pytest.TempPathFactory, svc_backbone: VisionTransformer
) -> None:
    """uvicorn closes the WebSocket itself (before the lifespan's exit): the client reads 1001
    ``shutting_down`` and the server counts it under code="1001", not as the client leaving."""
    store = _store(tmp_path_factory, svc_backbone)
    app = create_app(settings(store), backbone=svc_backbone)
    server = serve_in_thread(app)
    url = server.__enter__()
    with session(url, OPEN) as s:
        try:
            ready(s)
            s.ws.send(_f32(1.0))
            s.wait_for("window", 1)
            reader = threading.Thread(target=s.until_close, daemon=True)
            reader.start()
        finally:
            server.__exit__(None, None, None)  # stops uvicorn with the session live
        reader.join(30)
        assert not reader.is_alive()
    assert (s.close_code, s.close_reason) == (1001, "shutting_down"), s.types()[-3:]
    text = generate_latest(app.state.lookaside.metrics.registry).decode()
    closes = {
        line.split('code="')[1].split('"')[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("lookaside_stream_sessions_closed_total{")
    }
    assert closes == {"1001": 1.0}, closes
