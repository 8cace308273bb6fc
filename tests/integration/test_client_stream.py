"""``lookaside.client.stream`` and ``lookaside-stream`` against a real server (uvicorn on
127.0.0.1, the service's own app and ``GET /stream``, the tiny backbone).

A WAV file streamed unpaced (the server's ``stream_max_ahead_s`` raised) must yield exactly the
windows its length and the hop imply (counted by the stream tests' own arithmetic,
``stream_support.expected_windows``, not by the functions the server cuts with), each
scoring what ``POST /classify`` scores on the same samples cut offline (the file decoded by
soundfile, written back as a float WAV); the command prints those windows; an unknown adapter
closes the session with 4404 and the server's message.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lookaside.client import ArraySource, Client, StreamClosed, file_source
from lookaside.client.stream import main, stream
from lookaside.features import FeatureConfig
from lookaside.stream_protocol import StreamDropped, StreamEnd, StreamReady, StreamWindow
from service.app import create_app
from tests.integration.service.stream_support import expected_windows
from tests.integration.service.svc_support import (
    LABELS,
    make_checkpoint,
    put_in_store,
    settings,
    tiny,
)
from tests.live_server import serve_in_thread

FEATURES = FeatureConfig(target_frames=128)
"""1.28 s windows."""
TARGET_FRAMES = 128
HOP_S = 0.5
HOP_FRAMES = 50
RATE = 22_050
"""The file's own rate (the server resamples each window to the adapter's 16 kHz, as /classify
resamples a clip)."""
SECONDS = 4.37
TOL = 1e-5


@dataclass(frozen=True)
class Served:
    url: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store = tmp_path_factory.mktemp("store")
    backbone = tiny()
    put_in_store(store, make_checkpoint(backbone, "speech", features=FEATURES, seed=5))
    cfg = settings(store, stream_max_ahead_s=10_000.0)
    with serve_in_thread(create_app(cfg, backbone=backbone)) as url:
        yield Served(url)


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stereo PCM 16 WAV whose content changes every 0.4 s (windows score differently)."""
    rng = np.random.default_rng(7)
    n = int(SECONDS * RATE)
    t = np.arange(n) / RATE
    freq = rng.uniform(200, 3000, int(SECONDS / 0.4) + 1)[(t // 0.4).astype(int)]
    left = 0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(n)
    right = 0.3 * np.sin(2 * np.pi * 1.5 * freq * t) + 0.05 * rng.standard_normal(n)
    path = tmp_path_factory.mktemp("audio") / "call.wav"
    sf.write(path, np.stack([left, right], axis=1), RATE, subtype="PCM_16")
    return path


def _classify_offline(url: str, samples: np.ndarray) -> dict[str, float]:
    """``POST /classify`` of ``[frames, channels]`` float32 samples written as a float WAV."""
    buf = io.BytesIO()
    sf.write(buf, samples, RATE, format="WAV", subtype="FLOAT")
    with Client(url) as client:
        answer = client.classify(buf.getvalue(), "speech", top_k=len(LABELS))
    return {item.label: item.score for item in answer.results[0].labels}


def _stream_windows(url: str, wav: Path) -> tuple[list[StreamWindow], StreamReady, StreamEnd]:
    ready = end = None
    windows: list[StreamWindow] = []
    source = file_source(wav)
    session = stream(url, source, "speech", hop_s=HOP_S, top_k=5, realtime=False, chunk_s=0.37)
    with session:
        for message in session:
            if isinstance(message, StreamReady):
                ready = message
            elif isinstance(message, StreamEnd):
                end = message
            else:
                assert not isinstance(message, StreamDropped), message
                windows.append(message)
    assert ready is not None
    assert end is not None
    return windows, ready, end


def test_a_streamed_file_yields_the_windows_classify_scores(served: Served, wav: Path) -> None:
    samples, rate = sf.read(wav, dtype="float32", always_2d=True)
    assert rate == RATE
    ranges = expected_windows(samples.shape[0], TARGET_FRAMES, HOP_FRAMES, RATE)
    # by hand: 1295 ms = 28555 samples at 22.05 kHz, starts every 0.5 s = 11025 samples; the
    # 96358 samples hold 7 full windows, then the tail from 77175
    assert ranges[:2] == [(0, 28_555), (11_025, 39_580)]
    assert ranges[-1] == (77_175, samples.shape[0]) == (77_175, 96_358)
    assert len(ranges) == 8
    windows, ready, end = _stream_windows(served.url, wav)
    assert (ready.sample_rate, ready.channels, ready.format) == (RATE, 2, "f32")
    ((track,),) = [ready.tracks]
    assert track.hop_s == pytest.approx(HOP_S)
    assert [(a.adapter, a.version) for a in track.adapters] == [("speech", 1)]
    assert (end.windows, end.dropped) == (len(ranges), 0)
    assert end.seconds == pytest.approx(samples.shape[0] / RATE)
    assert [w.index for w in windows] == list(range(len(ranges)))
    for window, (start, stop) in zip(windows, ranges, strict=True):
        assert window.start_s == pytest.approx(start / RATE, abs=1e-6)
        assert window.end_s == pytest.approx(stop / RATE, abs=1e-6)
        ((result,),) = [window.results]
        assert (result.adapter, result.version) == ("speech", 1)
        got = {item.label: item.score for item in result.labels}
        want = _classify_offline(served.url, samples[start:stop])
        assert got.keys() == want.keys()
        assert got == pytest.approx(want, abs=TOL)
    # neighbouring windows differ: the comparison above would catch a window cut elsewhere
    tops = [tuple(i.score for i in w.results[0].labels) for w in windows]
    assert len(set(tops)) == len(tops)


def test_the_command_prints_the_windows(
    served: Served, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    windows, _, _ = _stream_windows(served.url, wav)
    base = [str(wav), "--adapter", "speech", "--url", served.url, "--hop", str(HOP_S)]
    assert main([*base, "--no-realtime", "--top-k", str(len(LABELS)), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["type"] for line in lines] == ["ready"] + ["window"] * len(windows) + ["end"]
    for line, window in zip(lines[1:-1], windows, strict=True):
        got = StreamWindow.model_validate(line)
        assert (got.index, got.start_s, got.end_s) == (window.index, window.start_s, window.end_s)
        # two runs of the same window: equal within the float noise of different batches
        ((mine,), (theirs,)) = got.results, window.results
        assert [i.label for i in mine.labels] == [i.label for i in theirs.labels]
        assert [i.score for i in mine.labels] == pytest.approx(
            [i.score for i in theirs.labels], abs=TOL
        )
    assert main([*base, "--no-realtime", "--top-k", "1"]) == 0
    out, err = capsys.readouterr()
    printed = out.splitlines()
    assert len(printed) == len(windows)
    for line, window in zip(printed, windows, strict=True):
        top = window.results[0].labels[0]
        assert f"{window.start_s:.2f}-{window.end_s:.2f} s" in line
        assert f"speech@1: {top.label} {top.score:.3f}" in line
    assert f"end: {len(windows)} windows, 0 dropped" in err


def test_an_unknown_adapter_closes_with_4404(
    served: Served, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(StreamClosed) as info:
        list(stream(served.url, file_source(wav), ["speech", "nope"], realtime=False))
    assert info.value.code == 4404
    assert "nope" in info.value.message
    assert main([str(wav), "--adapter", "nope", "--url", served.url]) == 1
    err = capsys.readouterr().err
    assert "4404" in err
    assert "nope" in err


def test_a_device_streams_through_the_command(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """FFmpeg's lavfi input stands in for the microphone (a device is never paced by the
    client: a microphone delivers at real time; lavfi at once, within the raised
    ``stream_max_ahead_s``): 2 s of a sine at 16 kHz makes the windows the arithmetic implies at
    the adapter's own hop (its 128 frames): one full window and the tail."""
    device = "sine=frequency=440:sample_rate=16000:duration=2"
    argv = ["--mic", "--mic-format", "lavfi", "--mic-device", device, "--mic-rate", "16000"]
    assert main([*argv, "--adapter", "speech", "--url", served.url, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    cuts = expected_windows(32_000, TARGET_FRAMES, TARGET_FRAMES, 16_000)
    assert cuts == [(0, 20_720), (20_480, 32_000)]  # 1.295 s, then the tail from 1.28 s
    assert [line["type"] for line in lines] == ["ready", "window", "window", "end"]
    assert lines[0]["sample_rate"] == 16_000
    assert lines[-1]["seconds"] == pytest.approx(2.0)
    times = [t for w in lines[1:3] for t in (w["start_s"], w["end_s"])]
    assert times == pytest.approx([t / 16_000 for cut in cuts for t in cut], abs=1e-6)


def test_an_unpaced_stream_stays_within_the_servers_ahead_bound(tmp_path: Path) -> None:
    """``realtime=False`` sends ahead of real time only as far as the ready message's
    ``max_ahead_s`` allows (less a margin): a server that allows 1 s is not made to close the
    session (4430), and the 2.5 s of audio take at least 1.5 s to send."""
    store = tmp_path / "store"
    backbone = tiny()
    put_in_store(store, make_checkpoint(backbone, "speech", features=FEATURES, seed=5))
    cfg = settings(store, stream_max_ahead_s=1.0)
    audio = np.random.default_rng(2).uniform(-0.5, 0.5, 40_000).astype(np.float32)
    with serve_in_thread(create_app(cfg, backbone=backbone)) as url:
        started = time.monotonic()
        messages = list(stream(url, ArraySource(audio, 16_000), "speech", realtime=False))
        took = time.monotonic() - started
    assert isinstance(messages[0], StreamReady)
    assert messages[0].limits.max_ahead_s == 1.0
    end = messages[-1]
    assert isinstance(end, StreamEnd)
    assert end.seconds == pytest.approx(2.5)
    assert end.windows == len(messages) - 2 == 2  # one full 1.295 s window and the tail
    assert took >= 1.5


def test_ctrl_c_ends_the_stream_cleanly(served: Served, tmp_path: Path) -> None:
    """The command at real time, interrupted (SIGINT) after its first window: it sends ``end``,
    prints the tail window the server cuts at the end and the summary, and exits 0."""
    path = tmp_path / "long.wav"
    sf.write(path, np.random.default_rng(1).uniform(-0.5, 0.5, 16_000 * 30), 16_000)
    argv = [str(path), "--adapter", "speech", "--url", served.url, "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lookaside.client.stream", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["type"] == "ready"
        first = json.loads(proc.stdout.readline())
        assert first["type"] == "window"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    rest = [json.loads(line) for line in out.splitlines()]
    assert rest[-1]["type"] == "end"
    assert rest[-1]["seconds"] < 10  # far from the file's 30 s
    assert rest[-1]["windows"] == 1 + len(rest) - 1
    assert "stopping: sending end" in err
