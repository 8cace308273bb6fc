"""Audio sources of :mod:`lookaside.client.stream`: a file, an array, or a capture device, each
giving float32 blocks ``[frames, channels]`` at its own rate; and the pacing, chunking and byte
layout the ``f32`` format of ``GET /stream`` wants (little-endian, channels interleaved, whole
sample frames: :mod:`lookaside.stream_protocol`).

A file is decoded whole by :func:`lookaside.decode.decode_audio` (the decoder ``/classify`` uses,
under a length and a decoded-size bound) and sent at its own rate and channel count, so a window
the server cuts holds exactly the samples ``/classify`` would decode from the same file. A device
(a microphone) is read with PyAV's device input and converted by ``av.AudioResampler`` to packed
float32 at the rate and channel count asked.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lookaside.client.errors import ClientError
from lookaside.stream_protocol import MAX_CHANNELS

if TYPE_CHECKING:
    import av

__all__ = [
    "MAX_DECODED_SAMPLES",
    "MAX_FILE_BYTES",
    "ArraySource",
    "AudioSource",
    "DeviceSource",
    "Pacer",
    "chunk_frames",
    "default_device",
    "f32le",
    "file_source",
    "open_device",
    "rechunk",
]

MAX_FILE_BYTES = 2 * 1024**3
"""Largest file :func:`file_source` reads (a bound before reading; an hour of 48 kHz stereo
float WAV is 1.4 GB)."""
MAX_DECODED_SAMPLES = 400_000_000
"""Decoded samples (channels x frames) a file may hold: 1.6 GB of float32, an hour of 48 kHz
stereo with room to spare. The decoder stops at it, whatever the header claims."""
DEVICE_TIMEOUT_S = 10.0
"""Seconds PyAV waits to open a device and for each read from it."""


class AudioSource(Protocol):
    """What a session streams: blocks of float32 ``[frames, channels]`` at ``sample_rate``."""

    sample_rate: int
    channels: int
    live: bool
    """True for a device that makes audio at real time itself (never paced by the sender)."""

    def blocks(self, frames: int) -> Iterator[np.ndarray]:
        """Blocks of at most ``frames`` frames, in order, until the source ends."""
        ...

    def close(self) -> None:
        """Release the source (a device); the session calls it once at its end."""
        ...


class ArraySource:
    """Audio already in memory: ``[samples]`` or ``[channels, samples]`` (the layout
    :func:`~lookaside.decode.decode_audio` returns), float (sent as is) or int16 (read as
    ``x / 32768``, as soundfile reads PCM 16), a numpy array or a CPU/GPU tensor."""

    live = False

    def __init__(self, samples: Any, sample_rate: int) -> None:
        if hasattr(samples, "detach"):  # a torch tensor: no torch import needed here
            samples = samples.detach().cpu().numpy()
        data = np.asarray(samples)
        if data.dtype == np.int16:
            data = data.astype(np.float32) / np.float32(32768.0)
        elif not np.issubdtype(data.dtype, np.floating):
            raise ClientError(f"audio samples must be float or int16, got {data.dtype}")
        if data.ndim == 1:
            data = data[None, :]
        if data.ndim != 2 or not 1 <= data.shape[0] <= MAX_CHANNELS:
            raise ClientError(
                f"audio must be [samples] or [channels, samples] with 1..{MAX_CHANNELS} "
                f"channels, got shape {tuple(data.shape)}"
            )
        if data.shape[1] == 0:
            raise ClientError("the audio has no samples")
        if not np.isfinite(data).all():
            raise ClientError("the audio holds NaN or infinite samples; the server refuses them")
        if sample_rate <= 0:
            raise ClientError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = int(sample_rate)
        self.channels = int(data.shape[0])
        self.frames = int(data.shape[1])
        self._data = np.ascontiguousarray(data.T, dtype=np.float32)  # [frames, channels]

    def blocks(self, frames: int) -> Iterator[np.ndarray]:
        if frames <= 0:
            raise ValueError(f"frames must be positive, got {frames}")
        for start in range(0, self.frames, frames):
            yield self._data[start : start + frames]

    def close(self) -> None:
        pass


def file_source(
    path: str | os.PathLike[str],
    *,
    max_seconds: float = 3600.0,
    max_samples: int = MAX_DECODED_SAMPLES,
) -> ArraySource:
    """A file any format :func:`~lookaside.decode.decode_audio` reads (WAV, FLAC, Ogg, MP3, AAC,
    the sound track of a video), decoded whole at its own rate and channel count.

    Raises:
        ClientError: the file is missing, unreadable or over :data:`MAX_FILE_BYTES`.
        lookaside.errors.BadAudio: not audio, damaged, over ``max_seconds`` or ``max_samples``.
    """
    from lookaside.decode import decode_audio  # torch: only a file source needs it

    file = Path(path)
    try:
        size = file.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ClientError(f"{file}: {size} bytes, over the {MAX_FILE_BYTES} bytes read")
        data = file.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {file}: {exc.strerror or exc}") from None
    wave, rate = decode_audio(data, max_seconds=max_seconds, max_samples=max_samples)
    return ArraySource(wave.numpy(), rate)


# -- devices ------------------------------------------------------------------------------------
def default_device(available: Iterable[str] | None = None) -> tuple[str, str]:
    """``(format, device)`` of the default microphone for this platform: PulseAudio (else ALSA)
    on Linux, AVFoundation's first audio device on macOS; Windows' DirectShow needs a device
    name (``--mic-device "audio=Microphone (...)"``, listed by ``ffmpeg -list_devices true -f
    dshow -i dummy``)."""
    if available is None:
        import av

        available = av.formats_available
    formats = set(available)
    if sys.platform == "darwin":
        return "avfoundation", ":0"
    if sys.platform == "win32":
        raise ClientError(
            'name the microphone on Windows: --mic-device "audio=NAME" (DirectShow; '
            "ffmpeg -list_devices true -f dshow -i dummy lists the names)"
        )
    for fmt in ("pulse", "alsa"):
        if fmt in formats:
            return fmt, "default"
    raise ClientError(
        "this PyAV's FFmpeg has neither the pulse nor the alsa input device; "
        "name one it has with --mic-format and --mic-device"
    )


class DeviceSource:
    """Audio read from an open PyAV input (a capture device, or any container with an audio
    stream), converted by ``av.AudioResampler`` to packed float32 at ``sample_rate`` with
    ``channels`` channels (1 or 2), and gathered into blocks of the size asked."""

    def __init__(
        self, container: av.container.InputContainer, sample_rate: int, channels: int
    ) -> None:
        if channels not in (1, 2):
            raise ClientError(f"a device is read as 1 or 2 channels, not {channels}")
        if sample_rate <= 0:
            raise ClientError(f"sample_rate must be positive, got {sample_rate}")
        if not container.streams.audio:
            container.close()
            raise ClientError("the device has no audio stream")
        self.sample_rate, self.channels = int(sample_rate), channels
        self.live = True
        self._container = container

    def _decoded(self) -> Iterator[np.ndarray]:
        import av

        layout = "mono" if self.channels == 1 else "stereo"
        resampler = av.AudioResampler(format="flt", layout=layout, rate=self.sample_rate)
        stream = self._container.streams.audio[0]
        try:
            for frame in self._container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(out.samples, self.channels)
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(out.samples, self.channels)
        except (av.error.FFmpegError, OSError) as exc:
            raise ClientError(f"reading the audio device failed: {exc}") from None

    def blocks(self, frames: int) -> Iterator[np.ndarray]:
        return rechunk(self._decoded(), frames)

    def close(self) -> None:
        self._container.close()


def open_device(
    fmt: str | None = None,
    device: str | None = None,
    *,
    sample_rate: int = 16_000,
    channels: int = 1,
    opener: Callable[..., Any] | None = None,
) -> DeviceSource:
    """Open a microphone (:func:`default_device` unless ``fmt``/``device`` say which) with
    PyAV, opening and each read bounded by :data:`DEVICE_TIMEOUT_S`. ``fmt="lavfi"`` with a
    filter graph (``"sine=frequency=440:sample_rate=16000:duration=3"``) is a device without a
    microphone. ``opener`` replaces ``av.open`` (tests)."""
    import av

    if fmt is None:
        fmt, default = default_device()
        device = default if device is None else device
    if device is None:
        raise ClientError(f"name the {fmt} input to read with --mic-device")
    open_ = av.open if opener is None else opener
    try:
        container = open_(device, format=fmt, timeout=(DEVICE_TIMEOUT_S, DEVICE_TIMEOUT_S))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise ClientError(
            f"cannot open the {fmt} input {device!r}: {exc}; choose another with "
            "--mic-format and --mic-device"
        ) from None
    return DeviceSource(container, sample_rate, channels)


# -- sending ------------------------------------------------------------------------------------
def rechunk(blocks: Iterable[np.ndarray], frames: int) -> Iterator[np.ndarray]:
    """``[n, C]`` blocks of any sizes -> blocks of exactly ``frames`` frames (the last may be
    shorter), in order, no frame lost or repeated; holds less than one output block."""
    if frames <= 0:
        raise ValueError(f"frames must be positive, got {frames}")
    held: list[np.ndarray] = []
    count = 0
    for block in blocks:
        while block.shape[0]:
            take = min(frames - count, block.shape[0])
            held.append(block[:take])
            count += take
            block = block[take:]
            if count == frames:
                yield np.concatenate(held)
                held, count = [], 0
    if count:
        yield np.concatenate(held)


def chunk_frames(rate: int, chunk_s: float, channels: int, max_frame_bytes: int) -> int:
    """Frames per binary frame: ``chunk_s`` of audio, at least one sample frame, and never over
    the server's ``max_frame_bytes`` (its limit from the ready message)."""
    if not (math.isfinite(chunk_s) and chunk_s > 0):
        raise ClientError(f"chunk_s must be a positive number of seconds, got {chunk_s}")
    per_frame = 4 * channels
    cap = max_frame_bytes // per_frame
    if cap < 1:
        raise ClientError(f"the server takes frames of {max_frame_bytes} bytes, under one sample")
    return max(1, min(round(chunk_s * rate), cap))


def f32le(block: np.ndarray) -> bytes:
    """``[frames, channels]`` -> the ``f32`` wire layout: float32 little-endian, interleaved."""
    return np.ascontiguousarray(block, dtype="<f4").tobytes()


class Pacer:
    """When each block may be sent: a block that ends at frame ``n`` is sent at
    ``start + n / rate - ahead_s`` (``ahead_s = 0``: when the audio would have been recorded,
    as a microphone delivers it; more: that far ahead of real time, within the server's
    ``max_ahead_s``). The clock starts at the first call."""

    def __init__(
        self, rate: int, ahead_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.ahead_s, self.clock = rate, max(0.0, ahead_s), clock
        self.start: float | None = None

    def delay(self, frames_after: int) -> float:
        """Seconds to wait before sending the block that ends at frame ``frames_after``."""
        now = self.clock()
        if self.start is None:
            self.start = now
        return max(0.0, self.start + frames_after / self.rate - self.ahead_s - now)
