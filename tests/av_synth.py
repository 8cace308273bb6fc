"""Videos synthesised with PyAV for the audio-visual tests: coloured frames and tones that switch
at known seconds, silent stretches, variable frame rates and rotated (phone-style) tracks.

Every frame is one flat colour (its second's colour) with a grey block in the top-left corner
whose level encodes the frame's index within its second, so a test can tell which frame was
kept; lossy codecs keep flat colours within a few levels.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

RATE = 16_000
BLOCK = 16
"""Side of the corner block that encodes the frame index."""
LEVEL_STEP = 24
"""Grey-level step per frame index in the corner block."""


@dataclass
class Second:
    """What one second of a synthetic clip shows and sounds like."""

    colour: tuple[int, int, int]
    tone_hz: float | None
    """A sine at this frequency, or silence."""


@dataclass
class Clip:
    seconds: Sequence[Second]
    fps: int = 10
    size: tuple[int, int] = (48, 64)
    """Coded (height, width)."""
    container: str = "matroska"
    video_codec: str = "mpeg4"
    audio_codec: str | None = "pcm_s16le"
    """None: no audio track."""
    rotation: int = 0
    """Display-matrix rotation (degrees counterclockwise), as phones write it."""
    frame_times: Sequence[float] | None = None
    """Explicit presentation times (a variable frame rate); default ``i / fps``."""
    extra: dict[str, object] = field(default_factory=dict)


def frame_image(colour: tuple[int, int, int], index: int, size: tuple[int, int]) -> np.ndarray:
    image = np.empty((*size, 3), dtype=np.uint8)
    image[:] = colour
    image[:BLOCK, :BLOCK] = min(255, 16 + LEVEL_STEP * index)
    return image


def frame_index_of(image: np.ndarray) -> int:
    """The frame index encoded in the corner block of a decoded (upright, unrotated) frame."""
    level = float(image[2 : BLOCK - 2, 2 : BLOCK - 2].mean())
    return round((level - 16) / LEVEL_STEP)


def tone(seconds: Sequence[Second], rate: int = RATE) -> np.ndarray:
    """The clip's sound: ``[samples]`` float32, one tone (or silence) per second."""
    t = np.arange(rate) / rate
    parts = [
        (0.5 * np.sin(2 * np.pi * s.tone_hz * t) if s.tone_hz else np.zeros(rate)) for s in seconds
    ]
    return np.concatenate(parts).astype(np.float32)


def encode(clip: Clip) -> bytes:
    """The clip as a container file's bytes."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=clip.container) as out:
        video = out.add_stream(clip.video_codec, rate=clip.fps)
        video.height, video.width = clip.size
        video.pix_fmt = "yuv420p"
        if clip.frame_times is not None:
            video.time_base = Fraction(1, 1000)
            video.codec_context.time_base = Fraction(1, 1000)
        if clip.rotation:
            video.set_display_rotation(clip.rotation)
        audio = out.add_stream(clip.audio_codec, rate=RATE) if clip.audio_codec else None
        if audio is not None:
            audio.layout = "mono"
        times = (
            list(clip.frame_times)
            if clip.frame_times is not None
            else [i / clip.fps for i in range(len(clip.seconds) * clip.fps)]
        )
        for t in times:
            second = min(int(t), len(clip.seconds) - 1)
            index = round((t - int(t)) * clip.fps)
            frame = av.VideoFrame.from_ndarray(
                frame_image(clip.seconds[second].colour, index, clip.size), format="rgb24"
            )
            if clip.frame_times is not None:
                frame.pts = round(t * 1000)
                frame.time_base = Fraction(1, 1000)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if audio is not None:
            samples = tone(clip.seconds)
            fmt = "s16" if clip.audio_codec == "pcm_s16le" else "fltp"
            chunk = 1024
            for start in range(0, len(samples), chunk):
                part = samples[start : start + chunk]
                data = (part * 32767).astype(np.int16) if fmt == "s16" else part
                frame = av.AudioFrame.from_ndarray(data[None, :], format=fmt, layout="mono")
                frame.sample_rate = RATE
                frame.pts = start
                for packet in audio.encode(frame):
                    out.mux(packet)
            for packet in audio.encode():
                out.mux(packet)
    return buf.getvalue()


def wav_bytes(seconds: Sequence[Second]) -> bytes:
    """The clip's sound alone, as a 16 kHz mono WAV file."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, tone(seconds), RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


PALETTE: list[tuple[int, int, int]] = [
    (220, 40, 40),
    (40, 200, 60),
    (40, 70, 220),
    (230, 210, 40),
    (200, 60, 200),
    (40, 200, 210),
]
TONES: list[float] = [440.0, 880.0, 1500.0, 2500.0, 600.0, 3300.0]
