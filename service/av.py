"""Audio-visual requests: upload bytes -> per-second inputs -> window jobs -> per-second answer.

Run in the featurize pool before anything is queued (so a bad video fails alone):
:func:`featurize_av` decodes the video once (:func:`lookaside.video.decode_video`, frames scaled
to the backbone's image size while decoding) and builds exactly what training feeds the model
(:func:`lookaside.video.av_inputs`: one spectrogram and one frame per second).

A clip longer than the adapter's ``segments`` is cut into consecutive windows
(:func:`lookaside.tasks.av_events.segment_windows`); windows of one length travel as one engine
job (the last, shorter window, if any, as a second job: the temporal model sees exactly the
seconds of its window). :func:`assemble` puts the windows' probabilities back in clip order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from lookaside.adapters.head import scores_of
from lookaside.features import FeatureConfig
from lookaside.tasks.av_events import segment_windows
from lookaside.video import VideoLimits, av_inputs, decode_video
from service.errors import EngineFailure


@dataclass(frozen=True)
class AvClip:
    """One decoded upload, per second."""

    duration_s: float
    """Length of the video track."""
    spec: Tensor
    """``[seconds, frames, mel]`` normalised fbank, float32 host."""
    pixels: Tensor
    """``[seconds, 3, height, width]`` ImageNet-normalised frames, float32 host."""
    featurize_s: float
    """Time spent decoding and featurising (for the metrics)."""
    audio_s: float = 0.0
    """Length of the sound track (the video's own, or the separate audio file)."""
    scored_audio_s: float = 0.0
    """Seconds of sound the per-second spectrograms read (one second per video second, the last
    one window long); sound after that is not scored."""

    @property
    def seconds(self) -> int:
        return int(self.spec.shape[0])


@dataclass(frozen=True)
class WindowGroup:
    """Windows of one length: one engine job."""

    windows: list[tuple[int, int]]
    """``[start, stop)`` seconds of each window, in clip order."""
    spec: Tensor
    """``[windows, length, frames, mel]``."""
    pixels: Tensor
    """``[windows, length, 3, height, width]``."""


def featurize_av(
    video: bytes,
    audio: bytes | None,
    features: FeatureConfig,
    image_size: tuple[int, int],
    limits: VideoLimits,
    deadline: float | None = None,
) -> AvClip:
    """Decode one upload and build the per-second inputs of ``forward_av``.

    Raises:
        BadVideo: empty, not a video, no audio track (without ``audio``), no frames, truncated,
            or over a limit.
        BadAudio: the sound cannot be decoded.
    """
    started = time.perf_counter()
    decoded = decode_video(video, audio, limits=limits, frame_size=image_size, deadline=deadline)
    spec, pixels = av_inputs(decoded, features, image_size)
    return AvClip(
        duration_s=float(decoded.duration),
        audio_s=decoded.audio.shape[-1] / decoded.sample_rate,
        scored_audio_s=decoded.seconds - 1 + features.window_seconds,
        spec=spec.float().contiguous(),
        pixels=pixels.float().contiguous(),
        featurize_s=time.perf_counter() - started,
    )


AUDIO_CUT_TOLERANCE_S = 0.05
"""Sound this much longer than the video is not worth a note (encoder padding, rounding)."""


def cut_audio_notes(clip: AvClip) -> list[str]:
    """A note when the sound runs past the video and its end was not scored (empty otherwise)."""
    cut = clip.audio_s - clip.scored_audio_s
    if clip.audio_s - clip.duration_s <= AUDIO_CUT_TOLERANCE_S or cut <= AUDIO_CUT_TOLERANCE_S:
        return []
    return [
        f"the audio ({clip.audio_s:.2f} s) is longer than the video ({clip.duration_s:.2f} s): "
        f"its last {cut:.2f} s, after {clip.scored_audio_s:.2f} s, were cut and not scored (one "
        "label per second of the video); send audio as long as the video to score it all"
    ]


def window_groups(clip: AvClip, segments: int) -> list[WindowGroup]:
    """The clip's windows of at most ``segments`` seconds, grouped by length (at most two)."""
    by_length: dict[int, list[tuple[int, int]]] = {}
    for start, stop in segment_windows(clip.seconds, segments):
        by_length.setdefault(stop - start, []).append((start, stop))
    return [
        WindowGroup(
            windows,
            torch.stack([clip.spec[a:b] for a, b in windows]),
            torch.stack([clip.pixels[a:b] for a, b in windows]),
        )
        for windows in by_length.values()
    ]


def assemble(groups: list[WindowGroup], logits: list[Tensor], seconds: int) -> Tensor:
    """``[seconds, classes]`` softmax probabilities in clip order from each group's
    ``[windows, length, classes]`` logits (one label per second: a single-label head)."""
    rows: list[Tensor | None] = [None] * seconds
    for group, out in zip(groups, logits, strict=True):
        probs = scores_of(out, multi_label=False)
        for (start, stop), window in zip(group.windows, probs, strict=True):
            for t in range(start, stop):
                rows[t] = window[t - start]
    missing = [t for t, r in enumerate(rows) if r is None]
    if missing:
        raise EngineFailure(f"seconds {missing} of the video got no prediction from the engine")
    return torch.stack([r for r in rows if r is not None])
