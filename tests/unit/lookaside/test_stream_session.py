"""The streaming client's session and CLI (:mod:`lookaside.client.stream_session`,
:mod:`lookaside.client.stream`) against a scripted WebSocket server (``websockets.sync.server``
on 127.0.0.1): what it sends (the opening message, every byte of the audio, ``end``), what it
yields, and how each way a session ends is raised. The real server's behaviour is tested in
tests/integration/test_client_stream.py."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from lookaside.client import (
    ArraySource,
    ClientError,
    ConnectionFailed,
    InvalidResponse,
    StreamClosed,
)
from lookaside.client.stream import main, stream
from lookaside.client.stream_session import ws_url
from lookaside.stream_protocol import (
    StreamDropped,
    StreamEnd,
    StreamOpen,
    StreamReady,
    StreamWindow,
)


@dataclass
class Seen:
    """What the scripted server received."""

    opening: StreamOpen | None = None
    frames: list[bytes] = field(default_factory=list)
    ended_at: float | None = None
    started_at: float | None = None


def _ready(max_frame_bytes: int = 1 << 20, max_ahead_s: float = 1000.0) -> str:
    return json.dumps(
        {
            "type": "ready",
            "session": "s1",
            "sample_rate": 8000,
            "format": "f32",
            "channels": 2,
            "follow": False,
            "tracks": [
                {
                    "track": 0,
                    "window_s": 0.1,
                    "hop_s": 0.1,
                    "adapters": [{"adapter": "speech", "version": 1}],
                }
            ],
            "limits": {
                "max_seconds": 3600,
                "idle_timeout_s": 30,
                "max_ahead_s": max_ahead_s,
                "max_frame_bytes": max_frame_bytes,
                "max_pending_windows": 8,
                "max_unsent": 64,
            },
        }
    )


def _window(index: int) -> str:
    return json.dumps(
        {
            "type": "window",
            "track": 0,
            "index": index,
            "start_s": index * 0.1,
            "end_s": index * 0.1 + 0.1,
            "results": [
                {"adapter": "speech", "version": 1, "labels": [{"label": "yes", "score": 0.75}]}
            ],
            "lag_s": 0.004,
        }
    )


def _receive_audio(ws: ServerConnection, seen: Seen) -> None:
    seen.opening = StreamOpen.model_validate_json(ws.recv(timeout=10))
    ws.send(_ready(max_frame_bytes=4000))
    seen.started_at = time.monotonic()
    while True:
        data = ws.recv(timeout=10)
        if isinstance(data, bytes):
            seen.frames.append(data)
            continue
        assert json.loads(data) == {"type": "end"}
        seen.ended_at = time.monotonic()
        return


def _answers(ws: ServerConnection, seen: Seen) -> None:
    _receive_audio(ws, seen)
    ws.send(_window(0))
    ws.send(
        json.dumps(
            {
                "type": "dropped",
                "track": 0,
                "index": 1,
                "start_s": 0.1,
                "end_s": 0.2,
                "reason": "overloaded",
                "message": "too many pending",
            }
        )
    )
    ws.send(json.dumps({"type": "end", "windows": 1, "dropped": 1, "seconds": 0.2}))
    ws.close(1000)


@contextmanager
def scripted(
    script: Callable[[ServerConnection, Seen], None], **serving: Any
) -> Iterator[tuple[str, Seen]]:
    seen = Seen()

    def handler(ws: ServerConnection) -> None:
        with suppress(ConnectionClosed):
            script(ws, seen)

    if "sock" not in serving:
        serving.update(host="127.0.0.1", port=0)
    with serve(handler, compression=None, **serving) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.socket.getsockname()[1]}", seen
        finally:
            server.shutdown()
            thread.join(10)


def _stereo(seconds: float, rate: int = 8000) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, (2, int(seconds * rate))).astype(np.float32)


def test_a_session_sends_the_audio_and_yields_the_answers() -> None:
    audio = _stereo(1.0)
    with scripted(_answers) as (url, seen):
        session = stream(
            url,
            ArraySource(audio, 8000),
            ["speech", "esc50@2"],
            top_k=3,
            hop_s=0.5,
            realtime=False,
            chunk_s=0.3,
        )
        messages = list(session)
    assert [type(m) for m in messages] == [StreamReady, StreamWindow, StreamDropped, StreamEnd]
    assert session.end == messages[-1]
    assert seen.opening == StreamOpen(
        adapters=["speech", "esc50@2"],
        sample_rate=8000,
        format="f32",
        channels=2,
        hop_s=0.5,
        top_k=3,
    )
    # 0.3 s chunks would be 2400 frames: capped at the server's 4000 bytes = 500 stereo frames
    assert {len(f) for f in seen.frames[:-1]} == {4000}
    got = np.frombuffer(b"".join(seen.frames), dtype="<f4").reshape(-1, 2)
    np.testing.assert_array_equal(got, audio.T)


def test_realtime_pacing_sends_no_faster_than_the_audio_lasts() -> None:
    with scripted(_answers) as (url, seen):
        list(stream(url, ArraySource(_stereo(0.6), 8000), "speech", chunk_s=0.1))
    assert seen.started_at is not None
    assert seen.ended_at is not None
    assert seen.ended_at - seen.started_at >= 0.55


def test_stop_sends_end_before_the_audio_is_over() -> None:
    with scripted(_answers) as (url, seen):
        with stream(url, ArraySource(_stereo(60.0), 8000), "speech") as session:
            for message in session:
                if isinstance(message, StreamReady):
                    session.stop()
        assert isinstance(session.end, StreamEnd)
    assert len(seen.frames) <= 2  # 0.1 s blocks: none or one was due before the stop


def _refuse(code: int, with_message: bool) -> Callable[[ServerConnection, Seen], None]:
    def script(ws: ServerConnection, seen: Seen) -> None:
        ws.recv(timeout=10)
        if with_message:
            ws.send(
                json.dumps(
                    {
                        "type": "error",
                        "code": code,
                        "reason": "not_found",
                        "message": "no adapter 'nope'; loaded: speech",
                    }
                )
            )
        ws.close(code, "not_found" if with_message else "")

    return script


def test_an_error_and_close_raise_stream_closed_with_the_server_message() -> None:
    with scripted(_refuse(4404, True)) as (url, _), pytest.raises(StreamClosed) as info:
        list(stream(url, ArraySource(_stereo(1.0), 8000), "nope"))
    assert (info.value.code, info.value.reason) == (4404, "not_found")
    assert info.value.message == "no adapter 'nope'; loaded: speech"
    assert "4404" in str(info.value)


def test_a_refusal_before_the_opening_is_read_is_raised() -> None:
    def busy(ws: ServerConnection, seen: Seen) -> None:  # as the server refuses at its cap
        error = {
            "type": "error",
            "code": 4429,
            "reason": "too_many_sessions",
            "message": "64 sessions are live",
        }
        ws.send(json.dumps(error))
        ws.close(4429, "too_many_sessions")

    with scripted(busy) as (url, _), pytest.raises(StreamClosed) as info:
        list(stream(url, ArraySource(_stereo(1.0), 8000), "speech"))
    assert (info.value.code, info.value.message) == (4429, "64 sessions are live")


def test_a_close_without_a_message_is_raised_with_its_code() -> None:
    with scripted(_refuse(1011, False)) as (url, _), pytest.raises(StreamClosed) as info:
        list(stream(url, ArraySource(_stereo(1.0), 8000), "speech"))
    assert info.value.code == 1011
    assert "server failed" in info.value.message


def test_a_silent_server_times_out() -> None:
    def silent(ws: ServerConnection, seen: Seen) -> None:
        ws.recv(timeout=10)
        ws.send(_ready())
        for _ in range(100):  # reads the audio, answers nothing, until the client gives up
            ws.recv(timeout=5)

    with scripted(silent) as (url, _), pytest.raises(ConnectionFailed, match="no message"):
        list(stream(url, ArraySource(_stereo(0.2), 8000), "speech", timeout=0.3))


# -- a server that stops reading: every wait still ends -----------------------------------------
@contextmanager
def never_reading() -> Iterator[str]:
    """A server that answers ready and never reads again: a 4 kB receive buffer and a
    one-message queue, so the client's TCP window shuts and its ``sendall`` blocks (as in
    ``websockets.sync``: under the connection's lock, without a timeout)."""
    released = threading.Event()

    def script(ws: ServerConnection, seen: Seen) -> None:
        ws.recv(timeout=10)
        ws.send(_ready())
        released.wait(60)

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # accepted sockets inherit it
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    serving = {"sock": listener, "max_queue": 1, "ping_interval": None, "close_timeout": 1}
    with listener, scripted(script, **serving) as (url, _):
        try:
            yield url
        finally:
            released.set()  # before the server's shutdown waits for its handler


def _in_thread(work: Callable[[], object], bound: float) -> object:
    """``work()``'s result or exception, failing the test if it has not returned in ``bound``
    seconds (a client stuck for good must fail the test, not hang it)."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), f"still blocked after {bound} s"
    return box[0]


def _long_source() -> ArraySource:
    return ArraySource(_stereo(120.0), 8000)  # 7.7 MB: far more than the socket buffers hold


def test_a_server_that_stops_reading_ends_the_session_within_its_bounds() -> None:
    """The send blocks; the session gives up when the send has waited its bound (``timeout``
    plus the ready's window and hop: 1.2 s), with an error that says so, and returns."""
    with never_reading() as url:
        session = stream(url, _long_source(), "speech", realtime=False, timeout=1.0,
                         close_timeout=1.0, chunk_s=1.0)  # fmt: skip
        started = time.monotonic()
        got = _in_thread(lambda: list(session), 15.0)
        took = time.monotonic() - started
    assert isinstance(got, ConnectionFailed), got
    assert "the server stopped reading the audio" in str(got)
    assert 1.2 <= took < 6.0  # the bound, plus the close (shut down at once: no lock to wait)


def test_closing_is_bounded_while_a_send_is_blocked() -> None:
    """Leaving the ``with`` block while the sender is blocked (a long ``timeout``: the send's
    own bound is far away) closes within ``close_timeout`` and a margin."""

    def open_then_leave() -> float:
        with stream(url, _long_source(), "speech", realtime=False, timeout=60.0,
                    close_timeout=1.0, chunk_s=1.0) as session:  # fmt: skip
            assert isinstance(next(session), StreamReady)
            time.sleep(1.0)  # the buffers fill in milliseconds
            leaving = time.monotonic()
        return time.monotonic() - leaving

    with never_reading() as url:
        took = _in_thread(open_then_leave, 20.0)
    assert isinstance(took, float), took
    assert took < 4.0


def test_a_second_ctrl_c_quits_the_command_while_a_send_is_blocked(tmp_path: Path) -> None:
    """The command against a server that stopped reading: the first Ctrl-C asks for ``end``
    (which cannot be sent), the second quits at once with 130."""
    path = tmp_path / "long.wav"
    sf.write(path, _stereo(120.0).T, 8000, subtype="FLOAT")
    with never_reading() as url:
        argv = [str(path), "--adapter", "speech", "--url", url, "--json", "--no-realtime"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "lookaside.client.stream", *argv, "--timeout", "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[3],
        )
        try:
            assert proc.stdout is not None
            assert json.loads(proc.stdout.readline())["type"] == "ready"
            time.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 130, err
    assert "stopping: sending end" in err
    assert "interrupted" in err
    assert took < 3.0


# -- 1009: whose limit ------------------------------------------------------------------------
def test_a_message_over_max_message_bytes_names_the_clients_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def big(ws: ServerConnection, seen: Seen) -> None:
        ws.recv(timeout=10)
        ws.send(_ready())
        labels = [{"label": f"label-{i:04d}", "score": 0.001} for i in range(200)]
        window = json.loads(_window(0))
        window["results"][0]["labels"] = labels
        ws.send(json.dumps(window))  # about 8 kB
        while True:  # reads the audio until the client closes
            ws.recv(timeout=10)

    with scripted(big) as (url, _), pytest.raises(StreamClosed) as info:
        list(stream(url, ArraySource(_stereo(0.2), 8000), "speech", max_message_bytes=4000))
    assert (info.value.code, info.value.by) == (1009, "client")
    assert "max_message_bytes (4000 bytes)" in info.value.message
    assert "stream_max_frame_bytes" not in str(info.value)
    assert str(info.value).startswith("the client closed the stream with 1009")
    with scripted(big) as (url, _):
        argv = [str(_wav(tmp_path)), "--adapter", "speech", "--url", url]
        assert main([*argv, "--max-message-bytes", "4000"]) == 1
    assert "over this client's max_message_bytes (4000 bytes)" in capsys.readouterr().err


def test_a_1009_from_the_server_names_its_frame_limit() -> None:
    with scripted(_refuse(1009, False)) as (url, _), pytest.raises(StreamClosed) as info:
        list(stream(url, ArraySource(_stereo(1.0), 8000), "speech", max_message_bytes=4000))
    assert (info.value.code, info.value.by) == (1009, "server")
    assert "stream_max_frame_bytes" in info.value.message
    assert "max_message_bytes" not in info.value.message


def test_a_message_outside_the_protocol_is_refused() -> None:
    def garbage(ws: ServerConnection, seen: Seen) -> None:
        ws.recv(timeout=10)
        ws.send(json.dumps({"type": "surprise"}))
        ws.recv(timeout=5)  # until the client closes

    with scripted(garbage) as (url, _), pytest.raises(InvalidResponse, match="not the protocol"):
        list(stream(url, ArraySource(_stereo(0.2), 8000), "speech"))


def test_no_server_is_a_connection_failure() -> None:
    with scripted(_answers) as (url, _):
        pass  # the port is free again
    with pytest.raises(ConnectionFailed, match="could not reach ws://127.0.0.1"):
        list(stream(url, ArraySource(_stereo(0.2), 8000), "speech", open_timeout=2))


def test_bad_arguments_are_refused_before_connecting() -> None:
    source = ArraySource(_stereo(0.2), 8000)
    with pytest.raises(ClientError, match="hop_s"):
        stream("http://127.0.0.1:1", source, "speech", hop_s=0.0)
    with pytest.raises(ClientError, match="name an adapter"):
        stream("http://127.0.0.1:1", source, [])
    with pytest.raises(ClientError, match="chunk_s"):
        stream("http://127.0.0.1:1", source, "speech", chunk_s=-1)


def test_http_urls_map_to_websocket_urls() -> None:
    assert ws_url("http://h:8000") == "ws://h:8000/stream"
    assert ws_url("https://h/api/") == "wss://h/api/stream"
    assert ws_url("ws://h:1/stream") == "ws://h:1/stream"
    with pytest.raises(ClientError, match="must start with"):
        ws_url("h:8000")


# -- the command --------------------------------------------------------------------------------
def _wav(tmp_path: Path) -> Path:
    path = tmp_path / "a.wav"
    sf.write(path, _stereo(0.2).T, 8000, subtype="FLOAT")
    return path


def test_the_command_prints_one_line_per_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with scripted(_answers) as (url, seen):
        status = main([str(_wav(tmp_path)), "--adapter", "speech", "--url", url, "--no-realtime"])
    out, err = capsys.readouterr()
    assert status == 0
    assert out.splitlines() == [
        "    0.00-0.10 s  speech@1: yes 0.750  lag 0.004 s",
        "    0.10-0.20 s  dropped (overloaded): too many pending",
    ]
    assert "window 0.1 s, hop 0.1 s: speech@1" in err
    assert "end: 1 windows, 1 dropped" in err
    assert seen.opening is not None
    assert seen.opening.adapters == ["speech"]


def test_the_command_prints_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with scripted(_answers) as (url, _):
        argv = [str(_wav(tmp_path)), "--adapter", "speech", "--url", url, "--json"]
        assert main(argv) == 0
    types = [json.loads(line)["type"] for line in capsys.readouterr().out.splitlines()]
    assert types == ["ready", "window", "dropped", "end"]


def test_the_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wav = str(_wav(tmp_path))
    with scripted(_refuse(4404, True)) as (url, _):
        assert main([wav, "--adapter", "nope", "--url", url]) == 1
    assert "4404" in capsys.readouterr().err
    assert main([str(tmp_path / "none.wav"), "--adapter", "a"]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main([wav, "--adapter", "a", "--hop", "0"]) == 2
    assert main([wav, "--adapter", "a", "--url", "ftp://x"]) == 2
    with scripted(_answers) as (url, _):
        pass
    assert main([wav, "--adapter", "a", "--url", url]) == 1
    assert "could not reach" in capsys.readouterr().err
    for argv in ([wav, "--mic", "--adapter", "a"], ["--adapter", "a"], [wav]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
