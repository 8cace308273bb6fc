"""Decompression bombs against a real server process (``python -m service``, default limits).

Each bomb is generated here, small on the wire (silence compresses) and huge when decoded:
multichannel high-rate FLAC, Ogg, MP3, ADPCM WAV, streams whose header lies about or omits their
length, a 1 Hz WAV, and videos whose sound track is a bomb. Each must be answered 413/422 within
seconds while the server's resident memory grows by less than ``RSS_BOUND`` (sampled in a thread
during the request), and the server must go on serving ordinary clips.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import av
import httpx
import numpy as np
import psutil
import pytest
import soundfile as sf

from tests.integration.service.av_support import AV_BACKBONE, av_checkpoint, tiny_av
from tests.integration.service.svc_support import ADMIN, encode, make_checkpoint, put_in_store
from tests.live_server import free_port, wait_until_ready

BUDGET = 2**24
"""The server's default ``max_decoded_samples``."""
RSS_BOUND = 64 * 2**20
"""Most the server's RSS may grow while it refuses one bomb. What the decoder holds is mono at the
adapters' feature rate (downmixed and resampled as decoded), at most ``max_audio_seconds`` of it
(600 s x 16 kHz float32 = 37 MiB), plus block-sized temporaries; measured: 23 MiB at worst."""
ANSWER_WITHIN_S = 5.0
"""Generous for a shared 2-core machine; the refusals measured here take well under a second."""


# -- bombs ---------------------------------------------------------------------------------------
def _sf_silence(channels: int, rate: int, seconds: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, channels, format=fmt, subtype=subtype) as f:
        block = np.zeros((rate, channels), np.int16)
        for _ in range(seconds):
            f.write(block)
    return buf.getvalue()


def _without_length(flac: bytes) -> bytes:
    """The FLAC with STREAMINFO's total-samples field zeroed: "length unknown"."""
    data = bytearray(flac)
    field = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
    data[18:26] = field.to_bytes(8, "big")
    return bytes(data)


def _mp3_silence(seconds: int, *, xing: bool) -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="mp3", options={} if xing else {"write_xing": "0"}) as c:
        stream = c.add_stream("libmp3lame", rate=48_000, layout="stereo")
        assert isinstance(stream, av.AudioStream)
        stream.bit_rate = 32_000
        for i in range(seconds * 48_000 // 1152):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((2, 1152), np.float32), format="fltp", layout="stereo"
            )
            frame.sample_rate, frame.pts = 48_000, i * 1152
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    return out.getvalue()


def _video(fmt: str, codec: str, layout: str, rate: int, seconds: int, video: str) -> bytes:
    """A tiny black video (1 fps, 32 x 32) whose sound track is ``seconds`` of silence."""
    out = io.BytesIO()
    channels = av.AudioLayout(layout).nb_channels
    sample_format = "s16" if codec == "flac" else "flt"
    dtype = np.int16 if codec == "flac" else np.float32
    with av.open(out, "w", format=fmt) as c:
        vstream = c.add_stream(video, rate=1)
        vstream.width, vstream.height, vstream.pix_fmt = 32, 32, "yuv420p"
        astream = c.add_stream(codec, rate=rate, layout=layout)
        assert isinstance(astream, av.AudioStream)
        for i in range(seconds):
            picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            picture.pts = i
            for packet in vstream.encode(picture):
                c.mux(packet)
        for packet in vstream.encode(None):
            c.mux(packet)
        n = 4096
        for i in range(seconds * rate // n):
            # packed samples: PyAV cannot build planar frames of 8 channels
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, n * channels), dtype), format=sample_format, layout=layout
            )
            frame.sample_rate, frame.pts = rate, i * n
            for packet in astream.encode(frame):
                c.mux(packet)
        for packet in astream.encode(None):
            c.mux(packet)
    return out.getvalue()


def _wav_1hz() -> bytes:
    """The 1,044-byte WAV whose header says 1 Hz and 500 s."""
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, 1, 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 1036)
        + b"WAVEfmt "
        + fmt
        + b"data"
        + struct.pack("<I", 1000)
        + bytes(1000)
    )


@dataclass(frozen=True)
class Bomb:
    make: Callable[[], bytes]
    content_type: str
    status: int
    reason: str
    route: str = "/classify"


BOMBS: dict[str, Bomb] = {
    # 8 x 192 kHz x 30 s = 46 M samples in 46 KB: refused from the header
    "flac-8ch-192k": Bomb(
        lambda: _sf_silence(8, 192_000, 30, "FLAC", "PCM_16"), "audio/flac", 413, "too_large"
    ),
    # the same without a length: decoded in blocks, stopped at the budget
    "flac-8ch-192k-no-length": Bomb(
        lambda: _without_length(_sf_silence(8, 192_000, 30, "FLAC", "PCM_16")),
        "audio/flac",
        413,
        "too_large",
    ),
    # one channel at 384 kHz without a length: the most frames the budget lets it hold
    "flac-1ch-384k-no-length": Bomb(
        lambda: _without_length(_sf_silence(1, 384_000, 50, "FLAC", "PCM_16")),
        "audio/flac",
        413,
        "too_large",
    ),
    "ogg-vorbis-8ch-96k": Bomb(
        lambda: _sf_silence(8, 96_000, 22, "OGG", "VORBIS"), "audio/ogg", 413, "too_large"
    ),
    # 200 s of stereo 48 kHz: its length only estimated from the bitrate (no Xing header)
    "mp3-no-xing": Bomb(lambda: _mp3_silence(10, xing=False) * 20, "audio/mpeg", 413, "too_large"),
    # a Xing header claiming 1 s in front of 200 s of frames: the header is believed, no more
    "mp3-xing-lies": Bomb(
        lambda: _mp3_silence(1, xing=True) + _mp3_silence(10, xing=False) * 20,
        "audio/mpeg",
        200,
        "",
    ),
    "wav-adpcm-2ch-192k": Bomb(
        lambda: _sf_silence(2, 192_000, 44, "WAV", "IMA_ADPCM"), "audio/wav", 413, "too_large"
    ),
    "wav-1hz": Bomb(_wav_1hz, "audio/wav", 422, "bad_rate"),
    "mkv-video-flac-8ch-192k": Bomb(
        lambda: _video("matroska", "flac", "7.1", 192_000, 12, "mpeg4"),
        "video/x-matroska",
        413,
        "too_large",
    ),
    "mp4-video-flac-8ch-192k": Bomb(
        lambda: _video("mp4", "flac", "7.1", 192_000, 12, "mpeg4"), "video/mp4", 413, "too_large"
    ),
    "webm-video-opus-6ch": Bomb(
        lambda: _video("webm", "libopus", "5.1", 48_000, 60, "libvpx"),
        "video/webm",
        413,
        "too_large",
    ),
    "av-event-mkv-flac-8ch-192k": Bomb(
        lambda: _video("matroska", "flac", "7.1", 192_000, 12, "mpeg4"),
        "video/x-matroska",
        413,
        "too_large",
        route="/av-event",
    ),
}


# -- server --------------------------------------------------------------------------------------
@dataclass
class Server:
    url: str
    process: psutil.Process


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    store = tmp_path_factory.mktemp("bombs") / "store"
    backbone = tiny_av()
    put_in_store(store, make_checkpoint(backbone, "esc50", seed=1))
    put_in_store(store, av_checkpoint(backbone, "ave", seed=2))
    port = free_port()
    env = {
        **os.environ,
        "LOOKASIDE_BACKBONE": AV_BACKBONE,
        "LOOKASIDE_DEVICE": "cpu",
        "LOOKASIDE_STORE": str(store),
        "LOOKASIDE_ADMIN_TOKEN": ADMIN,
        "LOOKASIDE_PORT": str(port),
        "LOOKASIDE_LOG_LEVEL": "warning",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, proc, 120)
        served = Server(url, psutil.Process(proc.pid))
        for _ in range(2):  # warm the decode and feature paths before measuring
            assert _classify(served, encode(2.0, rate=44_100, channels=2)).status_code == 200
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def _classify(server: Server, clip: bytes, content_type: str = "audio/wav") -> httpx.Response:
    return httpx.post(
        f"{server.url}/classify?adapter=esc50",
        content=clip,
        headers={"Content-Type": content_type},
        timeout=60,
    )


def _send(server: Server, bomb: Bomb, data: bytes) -> httpx.Response:
    if bomb.route == "/av-event":
        return httpx.post(
            f"{server.url}/av-event",
            files={"video": ("bomb.mkv", data, bomb.content_type)},
            data={"adapter": "ave"},
            timeout=60,
        )
    return _classify(server, data, bomb.content_type)


class _PeakRss:
    """The highest RSS of a process, sampled every 2 ms in a thread until stopped."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.base = process.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(0.002)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.base


# -- the table -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_is_refused_with_bounded_memory_and_the_server_goes_on(
    server: Server, name: str
) -> None:
    bomb = BOMBS[name]
    data = bomb.make()
    assert len(data) < 10 * 2**20
    with _PeakRss(server.process) as rss:
        started = time.monotonic()
        r = _send(server, bomb, data)
        elapsed = time.monotonic() - started
    growth_mib = rss.growth / 2**20
    print(f"{name}: {len(data):,} B -> {r.status_code} in {elapsed:.2f} s, +{growth_mib:.1f} MiB")
    assert r.status_code == bomb.status, r.text
    if bomb.reason:
        body = r.json()
        assert body["reason"] == bomb.reason, body
        assert ("LOOKASIDE_MAX_DECODED_SAMPLES" in body["detail"]) == (bomb.reason == "too_large")
    assert elapsed < ANSWER_WITHIN_S
    assert rss.growth < RSS_BOUND, f"RSS grew {rss.growth / 2**20:.1f} MiB"
    ok = _classify(server, encode(1.0, rate=48_000, channels=2))
    assert ok.status_code == 200, ok.text
    assert ok.json()["results"][0]["adapter"] == "esc50"
