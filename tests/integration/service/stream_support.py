"""Helpers of the ``GET /stream`` tests: generated audio, sending it in irregular chunks over a
real WebSocket (``websockets.sync.client``), collecting the server's messages until the close,
the windows a stream must make (written out here from the protocol's words, not imported), and
the reference: ``POST /classify`` on each window cut offline and written as a WAV."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

RECV_TIMEOUT_S = 30.0
"""Longest wait for one server message (a window of the tiny backbone takes milliseconds)."""
SCORE_TOL = 1e-5


# -- audio ------------------------------------------------------------------------------------
def changing_signal(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """``[samples, channels]`` float32 in [-0.9, 0.9]: a tone whose pitch, level and noise change
    every 0.7 s (so neighbouring windows score differently), one phase and gain per channel."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    segment = (t // 0.7).astype(np.int64)
    segments = int(segment[-1]) + 1 if n else 0
    freq = rng.uniform(150.0, 3000.0, segments)[segment]
    level = rng.uniform(0.05, 0.6, segments)[segment]
    noise = rng.uniform(0.0, 0.2, segments)[segment]
    out = np.empty((n, channels), dtype=np.float64)
    for c in range(channels):
        phase = rng.uniform(0, 2 * np.pi)
        out[:, c] = level * np.sin(2 * np.pi * freq * t + phase) * (1.0 - 0.3 * c)
        out[:, c] += noise * rng.standard_normal(n)
    return np.clip(out, -0.9, 0.9).astype(np.float32)


def as_pcm16(samples: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 (the samples a pcm16 stream sends)."""
    return np.round(samples * 32767.0).astype(np.int16)


def frame_bytes_of(samples: np.ndarray) -> bytes:
    """``[samples, channels]`` float32 or int16 -> little-endian interleaved bytes."""
    dtype = "<f4" if samples.dtype == np.float32 else "<i2"
    return np.ascontiguousarray(samples.astype(dtype)).tobytes()


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """A WAV of exactly these samples: FLOAT for float32, PCM_16 for int16 (same channels)."""
    subtype = "FLOAT" if samples.dtype == np.float32 else "PCM_16"
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


# -- the windows a stream must make -----------------------------------------------------------
def span_samples(target_frames: int, rate: int) -> int:
    """Samples of ``target_frames`` fbank frames: ceil(((F - 1) * 10 + 25) ms * rate)."""
    ms = (target_frames - 1) * 10 + 25
    return (ms * rate + 999) // 1000


def expected_windows(
    samples: int, target_frames: int, hop_frames: int, rate: int, *, ended: bool = True
) -> list[tuple[int, int]]:
    """``(start, stop)`` sample ranges of every window of a ``samples``-long stream, in order:
    each full window ``k`` (``k * hop * rate // 100 + span <= samples``), then, after ``end``,
    the tail (the rest after the last full window, if any and at least 25 ms)."""
    span = span_samples(target_frames, rate)
    out: list[tuple[int, int]] = []
    k = 0
    while k * hop_frames * rate // 100 + span <= samples:
        start = k * hop_frames * rate // 100
        out.append((start, start + span))
        k += 1
    covered = out[-1][1] if out else 0
    start = k * hop_frames * rate // 100
    if ended and samples > covered and (samples - start) * 1000 >= 25 * rate:
        out.append((start, samples))
    return out


# -- the WebSocket client ---------------------------------------------------------------------
def ws_url(url: str) -> str:
    return url.replace("http://", "ws://", 1) + "/stream"


@contextmanager
def open_ws(
    url: str, *, small_receive_buffer: bool = False, **kw: Any
) -> Iterator[ClientConnection]:
    """A WebSocket to ``url``/stream (no compression: frame sizes are what is sent).
    ``small_receive_buffer``: a 4 kB kernel receive buffer and a one-message client queue, so a
    client that does not call recv really stops reading (the TCP window closes)."""
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 5)
    kw.setdefault("max_size", 16 * 1024 * 1024)
    if small_receive_buffer:
        host, port = url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect((host, int(port)))
        kw["sock"] = sock
        kw["max_queue"] = 1
    with connect(ws_url(url), compression=None, proxy=None, **kw) as conn:
        yield conn


@dataclass
class Session:
    """One WebSocket session: the messages received so far and, once closed, the close."""

    ws: ClientConnection
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None

    def recv(self, timeout: float = RECV_TIMEOUT_S) -> dict[str, Any] | None:
        """The next message (parsed), or None once the server has closed."""
        if self.close_code is not None:
            return None
        try:
            raw = self.ws.recv(timeout=timeout)
        except ConnectionClosed:
            self.close_code, self.close_reason = self.ws.close_code, self.ws.close_reason
            return None
        assert isinstance(raw, str), f"the server sent a binary frame: {raw[:40]!r}"
        msg = json.loads(raw)
        assert isinstance(msg, dict), raw
        self.messages.append(msg)
        return msg

    def drain(self) -> None:
        """Take every message already here (the client keeps reading while it sends)."""
        while self.close_code is None:
            try:
                if self.recv(timeout=0) is None:
                    return
            except TimeoutError:
                return

    def until_close(self, timeout: float = RECV_TIMEOUT_S) -> Session:
        """Read until the server closes (each wait bounded by ``timeout``)."""
        while self.recv(timeout=timeout) is not None:
            pass
        return self

    def wait_for(self, kind: str, count: int, timeout: float = RECV_TIMEOUT_S) -> None:
        """Read until ``count`` messages of ``kind`` are here (or fail after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while sum(m["type"] == kind for m in self.messages) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"{count} {kind!r} messages did not arrive: {self.types()}"
            assert self.recv(timeout=left) is not None, (self.close_code, self.messages[-3:])

    def send_json(self, obj: Any) -> None:
        self.ws.send(json.dumps(obj))

    def send_chunks(
        self, data: bytes, frame: int, rng: np.random.Generator, max_frames: int
    ) -> int:
        """Send ``data`` in irregular binary frames of 1..``max_frames`` sample frames (sizes
        drawn from ``rng``, short and long mixed), reading what arrived after each; the number
        of binary frames sent."""
        assert len(data) % frame == 0
        pos, sent = 0, 0
        while pos < len(data):
            small = rng.random() < 0.3
            frames = int(rng.integers(1, 64 if small else max_frames + 1))
            self.ws.send(data[pos : pos + frames * frame])
            pos += frames * frame
            sent += 1
            self.drain()
        return sent

    def send_until_closed(self, data: bytes, frame_bytes: int) -> None:
        """Send ``data`` in ``frame_bytes`` frames as fast as possible, reading after each,
        until the server closes (a send after its close is the server's refusal, not an error)."""
        for start in range(0, len(data), frame_bytes):
            try:
                self.ws.send(data[start : start + frame_bytes])
            except ConnectionClosed:
                return
            self.drain()
            if self.close_code is not None:
                return

    def end(self) -> Session:
        """Send ``end`` and read until the close."""
        self.send_json({"type": "end"})
        return self.until_close()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def types(self) -> list[str]:
        return [str(m.get("type")) for m in self.messages]


@contextmanager
def session(url: str, opening: dict[str, Any] | str | None, **kw: Any) -> Iterator[Session]:
    """A connected :class:`Session`; ``opening`` (a dict sent as JSON, a raw string, or None for
    nothing) is sent first. The connection is closed when the block ends."""
    with open_ws(url, **kw) as ws:
        s = Session(ws)
        if opening is not None:
            # a server may refuse before it reads the opening (too many sessions): recv says why
            with suppress(ConnectionClosed):
                ws.send(opening if isinstance(opening, str) else json.dumps(opening))
        yield s


def ready(s: Session) -> dict[str, Any]:
    """The StreamReady answer to the opening message (fails with the server's error)."""
    msg = s.recv()
    assert msg is not None, (s.close_code, s.close_reason)
    assert msg["type"] == "ready", (msg, s.close_code, s.close_reason)
    return msg


def assert_refused(s: Session, code: int, *words: str) -> dict[str, Any]:
    """The server sent StreamError ``code`` (with a message naming ``words``), then closed the
    WebSocket with ``code`` and the error's reason; the error."""
    s.until_close()
    errors = s.of_type("error")
    assert errors, f"no error message before close {s.close_code}: {s.types()}"
    err = errors[-1]
    assert s.messages[-1] is err, f"messages after the error: {s.types()}"
    assert err["code"] == code, err
    assert isinstance(err["reason"], str), err
    assert err["reason"], err
    assert isinstance(err["message"], str), err
    assert len(err["message"]) > 10, err
    for word in words:
        assert word.lower() in err["message"].lower(), (word, err)
    assert (s.close_code, s.close_reason) == (code, err["reason"]), (s.close_code, s.close_reason)
    return err


# -- the reference: POST /classify on the same samples ----------------------------------------
def classify(url: str, adapters: Sequence[str], wav: bytes) -> dict[str, dict[str, Any]]:
    """``{"name@version": result}`` of ``POST /classify`` on ``wav`` with every label."""
    r = httpx.post(
        f"{url}/classify",
        files={"file": ("window.wav", wav, "audio/wav")},
        data={"adapter": ",".join(adapters), "top_k": "1000"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return {f"{x['adapter']}@{x['version']}": x for x in r.json()["results"]}


def scores(labels: list[dict[str, Any]]) -> dict[str, float]:
    return {item["label"]: float(item["score"]) for item in labels}


def assert_same_scores(got: list[dict[str, Any]], want: list[dict[str, Any]], what: str) -> None:
    """The same labels, each score within :data:`SCORE_TOL`."""
    g, w = scores(got), scores(want)
    assert set(g) == set(w), (what, g, w)
    for label, score in w.items():
        assert g[label] == pytest.approx(score, abs=SCORE_TOL), (what, label, g, w)


def check_windows_against_classify(
    url: str,
    windows: list[dict[str, Any]],
    cuts: list[tuple[int, int]],
    samples: np.ndarray,
    rate: int,
) -> None:
    """Each window message equals ``/classify`` of its samples cut offline, adapter by adapter
    (the version that served it), and covers the expected seconds."""
    assert len(windows) == len(cuts), (len(windows), len(cuts))
    for i, (msg, (start, stop)) in enumerate(zip(windows, cuts, strict=True)):
        assert msg["index"] == i, (i, msg["index"])
        assert msg["start_s"] == pytest.approx(start / rate, abs=1e-6), (i, msg["start_s"])
        assert msg["end_s"] == pytest.approx(stop / rate, abs=1e-6), (i, msg["end_s"])
        refs = [f"{r['adapter']}@{r['version']}" for r in msg["results"]]
        want = classify(url, refs, wav_bytes(samples[start:stop], rate))
        for result, ref in zip(msg["results"], refs, strict=True):
            assert_same_scores(result["labels"], want[ref]["labels"], f"window {i} {ref}")


# -- metrics ----------------------------------------------------------------------------------
def metric(url: str, name: str, **labels: str) -> float | None:
    """Sum of the ``name`` samples of ``GET /metrics`` whose labels include ``labels``; None
    when there is none."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    values = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None


def wait_metric(url: str, name: str, want: float, timeout: float = 10.0, **labels: str) -> float:
    """Poll ``name`` until it equals ``want`` (a session's bookkeeping ends just after its
    close); the last value read."""
    deadline = time.monotonic() + timeout
    while True:
        got = metric(url, name, **labels)
        if got == want or time.monotonic() > deadline:
            return -1.0 if got is None else got
        time.sleep(0.05)


def stream_through(
    url: str,
    opening: dict[str, Any],
    samples: np.ndarray,
    rng: np.random.Generator,
    max_frames: int,
) -> tuple[dict[str, Any], Session]:
    """Open a session, send ``samples`` (``[n, channels]``) in irregular frames, send ``end``
    and read until the close: (the ready message, the session)."""
    with session(url, opening) as s:
        answer = ready(s)
        s.send_chunks(frame_bytes_of(samples), samples.shape[1] * samples.itemsize, rng, max_frames)
        s.end()
    return answer, s
