"""Uploaded video bytes -> one frame (or a few) and one second of audio per second of the clip.

PyAV (FFmpeg) decodes the first video track; the sound comes from the container's first audio
track or from a separate audio file (:func:`lookaside.decode.decode_audio`). For every second
``s`` of the clip the frame nearest each target time ``s + (j + 0.5) / k`` is kept
(``k = frames_per_second``; ``k = 1`` is the frame nearest the second's centre), chosen by
presentation time, so variable-frame-rate videos work; frames are turned upright by their display
matrix (phones store portrait video as rotated landscape). Only the chosen frames are converted
to RGB, optionally scaled on the way (``frame_size``), so memory stays bounded.

Limits are checked from the headers before decoding wherever the container records them, and
again while decoding: duration, resolution (of every frame, not only the header's), frame count
and the sound's decoded samples (:class:`VideoLimits`; the sound is downmixed while it is
decoded, so what is held is its frames, not channels x frames). Every refusal
is a :class:`~lookaside.errors.BadVideo` with a machine-readable reason and a message that names
the fix; a video without sound is refused unless an audio file is supplied.

:func:`av_inputs` turns a decoded clip into what ``MultiAdapterModel.forward_av`` takes: the
spectrogram of each second (:func:`lookaside.features.segment_features`, with the adapter's
feature config) and each second's frame as backbone pixels
(:func:`lookaside.features.frames_to_pixels`).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from lookaside.decode import decode_audio
from lookaside.decode_probe import ffmpeg_message
from lookaside.errors import BadVideo, ConfigError, DeadlineExceeded
from lookaside.features import FeatureConfig, frames_to_pixels, segment_features

if TYPE_CHECKING:
    import av

DEFAULT_MAX_DECODED_SAMPLES = 2**24
"""16.8 M samples: 64 MiB of float32 at most, 87 s of 48 kHz stereo, far above a 10 s clip."""
SUPPORTED = "upload an MP4, MOV, MKV or WebM video with a sound track (or the sound as a file)"


class VideoLimits(BaseModel):
    """How large a video may be; each refusal names the limit and its value."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    max_seconds: float = Field(120.0, gt=0, allow_inf_nan=False)
    """Longest video accepted (seconds)."""
    max_side: int = Field(4096, gt=0)
    """Largest width or height of the coded frames (pixels)."""
    max_frames: int = Field(20_000, gt=0)
    """Most frames decoded from one video (a 120 s clip at 60 fps is 7,200)."""
    frames_per_second: int = Field(1, ge=1, le=30)
    """Frames kept per second of video (1: the frame nearest each second's centre)."""
    max_decoded_samples: int = Field(DEFAULT_MAX_DECODED_SAMPLES, gt=0)
    """Most audio samples (channels x frames at the file's own rate) decoded from the sound:
    checked from the header and counted while decoding (a video's sound track can be a
    decompression bomb: 8 channels at 192 kHz in a few kilobytes)."""


@dataclass(frozen=True)
class DecodedVideo:
    """The kept frames and the whole sound track of one clip."""

    frames: Tensor
    """``[seconds, frames_per_second, height, width, 3]`` uint8 RGB, upright."""
    frame_times: Tensor
    """``[seconds, frames_per_second]`` float64 presentation time (s) of each kept frame."""
    audio: Tensor
    """``[1, samples]`` float32 sound track, downmixed to mono while decoding (the AV recipe
    averages channels; :func:`lookaside.decode.downmix`), not yet cut into seconds."""
    sample_rate: int
    """Rate of ``audio`` in Hz."""
    duration: float
    """Length of the video track in seconds."""
    rotation: int
    """Degrees the frames were turned counterclockwise to stand upright (display matrix)."""

    @property
    def seconds(self) -> int:
        """One-second segments of the clip."""
        return int(self.frames.shape[0])


def num_segments(duration: float) -> int:
    """One-second segments of a clip: a trailing part of at least half a second counts."""
    return max(1, math.floor(duration + 0.5))


def decode_video(
    data: bytes,
    audio: bytes | None = None,
    *,
    limits: VideoLimits | None = None,
    frame_size: tuple[int, int] | None = None,
    deadline: float | None = None,
) -> DecodedVideo:
    """Decode one clip: the frames nearest each second's target times, and its sound.

    Args:
        data: the video file's bytes.
        audio: a separate audio file for the sound (then the video's own track is ignored).
        limits: duration / resolution / frame-count limits and frames kept per second.
        frame_size: ``(height, width)`` the kept frames are scaled to (e.g. the backbone's image
            size, so a 4K upload does not hold 4K frames); None keeps the decoded size.
        deadline: ``time.monotonic()`` past which decoding stops (checked at every frame: a
            large video can take far longer to decode than its caller will wait).

    Raises:
        DeadlineExceeded: ``deadline`` passed while frames were being decoded.
        BadVideo: see :class:`~lookaside.errors.BadVideo` for the reasons.
        BadAudio: the sound cannot be decoded, or decodes to more than
            ``limits.max_decoded_samples`` (``too_large``).
    """
    limits = limits or VideoLimits()
    if frame_size is not None:
        frame_size = check_frame_size(frame_size)
    if not data:
        raise BadVideo("empty", f"the video upload is empty; {SUPPORTED}")
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="replace")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise BadVideo(
            "not_video",
            f"the upload is not a readable video ({ffmpeg_message(exc)}); {SUPPORTED}",
        ) from exc
    with container:
        if not container.streams.video:
            raise BadVideo("no_video_track", f"the file has no video track; {SUPPORTED}")
        if audio is None and not container.streams.audio:
            raise BadVideo(
                "no_audio_track",
                "the video has no audio track: upload a video with sound, or send its sound as "
                "a separate audio file",
            )
        stream = container.streams.video[0]
        declared = _declared_seconds(container, stream)
        _check_header(stream, declared, limits)
        frames, times, duration, rotation = _pick_frames(
            container, stream, limits, frame_size, deadline
        )
    if declared is not None and duration < declared - max(0.5, 0.05 * declared):
        raise BadVideo(
            "truncated",
            f"the video is truncated or damaged: {duration:.2f} s of frames decoded of the "
            f"{declared:.2f} s it declares; upload the complete file",
        )
    wave, rate = decode_audio(
        audio if audio is not None else data,
        max_seconds=limits.max_seconds,
        max_samples=limits.max_decoded_samples,
        mono=True,
    )
    return DecodedVideo(frames, times, wave, rate, duration, rotation)


def av_inputs(
    video: DecodedVideo, features: FeatureConfig, image_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """``(spec [seconds, target_frames, mel], pixels [seconds, 3, h, w])`` for ``forward_av``.

    Each second's spectrogram follows the adapter's feature config; its frame is the kept frame
    nearest the second's centre (index ``k // 2`` of the ``k`` kept per second).
    """
    spec = segment_features(video.audio, video.sample_rate, features, video.seconds)
    centre = video.frames[:, video.frames.shape[1] // 2]
    return spec, frames_to_pixels(centre, image_size)


# -- internals ---------------------------------------------------------------------------------


def _declared_seconds(
    container: av.container.InputContainer, stream: av.VideoStream
) -> float | None:
    """The video track's length as the container records it (None if it does not)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1e6  # AV_TIME_BASE
    return None


def _too_long(seconds: float, limits: VideoLimits, *, at_least: bool = False) -> BadVideo:
    lasts = f"more than {seconds:g} s" if at_least else f"{seconds:.1f} s"
    return BadVideo(
        "too_long",
        f"the video lasts {lasts} but the limit is {limits.max_seconds:g} s (max_seconds); "
        "trim it or split it into shorter clips",
    )


def _too_many_frames(count: int, limits: VideoLimits) -> BadVideo:
    return BadVideo(
        "too_many_frames",
        f"the video has {count} frames or more, over the limit of {limits.max_frames} "
        "(max_frames); lower its frame rate or shorten it",
    )


def _too_large(width: int, height: int, limits: VideoLimits) -> BadVideo:
    return BadVideo(
        "too_large",
        f"the video is {width}x{height} pixels, over the limit of {limits.max_side} pixels "
        "per side (max_side); scale it down",
    )


def _check_header(stream: av.VideoStream, declared: float | None, limits: VideoLimits) -> None:
    width, height = stream.codec_context.width, stream.codec_context.height
    if max(width, height) > limits.max_side:
        raise _too_large(width, height, limits)
    if declared is not None and declared > limits.max_seconds + 0.5:
        raise _too_long(declared, limits)
    if stream.frames and stream.frames > limits.max_frames:
        raise _too_many_frames(stream.frames, limits)


class _FramePicker:
    """Keeps, for each target time, the frame nearest to it; frames arrive in presentation order.

    A target is settled (its frame converted to RGB, the decoded frame released) as soon as a
    frame later than the next target arrives, so at most a few decoded frames are alive at once.
    """

    def __init__(self, limits: VideoLimits, frame_size: tuple[int, int] | None) -> None:
        self.k = limits.frames_per_second
        self.frame_size = frame_size
        horizon = math.ceil(limits.max_seconds + 1)
        self.targets = (np.arange(horizon * self.k) + 0.5) / self.k
        self.best: list[tuple[float, float, av.VideoFrame | None] | None] = [None] * len(
            self.targets
        )
        self.images: list[np.ndarray | None] = [None] * len(self.targets)
        self.settled = 0
        self.last_time = -math.inf
        self.rotation = 0
        self._last_converted: tuple[int, np.ndarray] | None = None

    def offer(self, frame: av.VideoFrame, t: float) -> None:
        """Consider one decoded frame at time ``t`` (seconds from the start)."""
        self.last_time = max(self.last_time, t)
        self.rotation = int(frame.rotation or 0)
        j = int(np.searchsorted(self.targets, t))
        # a frame can only be the nearest one for the targets on either side of it
        for i in (j - 1, j):
            if 0 <= i < len(self.targets):
                d = abs(t - self.targets[i])
                current = self.best[i]
                if current is None or d < current[0]:
                    self.best[i] = (d, t, frame)
        self._settle(until=j - 1)

    def _settle(self, until: int) -> None:
        while self.settled < min(until, len(self.targets)):
            entry = self.best[self.settled]
            if entry is not None and entry[2] is not None:
                self.images[self.settled] = self._convert(entry[2])
                self.best[self.settled] = (entry[0], entry[1], None)
            self.settled += 1

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        if self._last_converted is not None and self._last_converted[0] == id(frame):
            return self._last_converted[1]
        turns = round(int(frame.rotation or 0) / 90) % 4
        image = _to_rgb(frame, self.frame_size, turns)
        self._last_converted = (id(frame), image)
        return image

    def result(self, interval: float) -> tuple[Tensor, Tensor, float, int]:
        """``(frames, times, duration, rotation)`` for the seconds the video really lasts."""
        duration = self.last_time + interval
        seconds = num_segments(duration)
        count = seconds * self.k
        self._settle(until=min(count, len(self.targets)))
        found = [
            (e[1], img) if e is not None and img is not None else None
            for e, img in zip(self.best[:count], self.images[:count], strict=True)
        ]
        found += [None] * (count - len(found))
        # targets before the first frame or after the last one: the edge frame is the nearest
        first = next(f for f in found if f is not None)
        chosen: list[tuple[float, np.ndarray]] = []
        for f in found:
            chosen.append(f if f is not None else (chosen[-1] if chosen else first))
        frames = torch.from_numpy(np.stack([img for _, img in chosen]))
        frames = frames.view(seconds, self.k, *frames.shape[1:])
        times = torch.tensor([t for t, _ in chosen], dtype=torch.float64).view(seconds, self.k)
        return frames, times, duration, (round(self.rotation / 90) % 4) * 90


def _pick_frames(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    limits: VideoLimits,
    frame_size: tuple[int, int] | None,
    deadline: float | None = None,
) -> tuple[Tensor, Tensor, float, int]:
    import av

    picker = _FramePicker(limits, frame_size)
    start = 0.0
    if stream.start_time is not None and stream.time_base is not None:
        start = float(stream.start_time * stream.time_base)
    rate = stream.average_rate or stream.guessed_rate
    interval = 1.0 / float(rate) if rate else 0.0
    count = 0
    try:
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            count += 1
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded(
                    f"decoding the video passed the request's deadline after {count - 1} frames; "
                    "send a shorter or smaller video"
                )
            if count > limits.max_frames:
                raise _too_many_frames(count, limits)
            if max(frame.width, frame.height) > limits.max_side:  # a header is only a claim
                raise _too_large(frame.width, frame.height, limits)
            t = float(frame.time) - start
            if t > limits.max_seconds + 0.5:
                raise _too_long(limits.max_seconds, limits, at_least=True)
            picker.offer(frame, t)
    except av.error.FFmpegError as exc:
        reason = "truncated" if count else "not_video"
        raise BadVideo(
            reason,
            f"the video could not be decoded ({ffmpeg_message(exc)}); upload the complete file",
        ) from exc
    if count == 0:
        raise BadVideo("no_frames", f"the video track holds no decodable frames; {SUPPORTED}")
    return picker.result(interval)


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None, quarter_turns: int) -> np.ndarray:
    """Upright ``[H, W, 3]`` uint8 RGB; scaled (swscale) so the upright image is ``size``."""
    if size is not None:
        height, width = size if quarter_turns % 2 == 0 else (size[1], size[0])
        frame = frame.reformat(width=width, height=height, format="rgb24")
    array = frame.to_ndarray(format="rgb24")
    if quarter_turns:
        # the display matrix rotates counterclockwise by frame.rotation degrees
        array = np.rot90(array, k=quarter_turns)
    return np.ascontiguousarray(array)


def check_frame_size(size: tuple[int, int]) -> tuple[int, int]:
    """Validate a ``(height, width)`` output size."""
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"frame_size must be (height, width) in pixels, got {size}")
    return size
