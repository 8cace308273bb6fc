"""Upload bytes -> per-feature-config windows, run in a thread pool before anything is queued.

A request is decoded once; each distinct :class:`~lookaside.features.FeatureConfig` among the
adapters it names is featurised once (adapters trained with the same config share the tensor), with
exactly the library's :func:`~lookaside.features.extract_windows`, so serving reproduces training.
Every failure here is the request's own (:class:`~lookaside.errors.BadAudio`), raised before a
batch could see it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor

from lookaside.decode import decode_audio
from lookaside.features import FRAME_SHIFT_MS, FeatureConfig, extract_windows


@dataclass(frozen=True)
class ClipWindows:
    """The windows of one clip under one feature config."""

    features: Tensor
    """``[windows, frames, mel]`` normalised fbank, float32 on the host."""
    start_s: list[float]
    """Start of each window in the clip, in seconds."""
    window_s: float
    """Duration one window covers."""


@dataclass(frozen=True)
class Featurized:
    """What the engine needs from one upload."""

    duration_s: float
    """Length of the decoded clip."""
    by_config: dict[FeatureConfig, ClipWindows]
    seconds: float
    """Time spent decoding and featurising (for the metrics)."""


def featurize(data: bytes, configs: Iterable[FeatureConfig], *, max_seconds: float) -> Featurized:
    """Decode ``data`` once and featurise it once per distinct config.

    Raises:
        BadAudio: the upload is empty, not audio, truncated, too long or too short.
    """
    started = time.perf_counter()
    wave, rate = decode_audio(data, max_seconds=max_seconds)
    duration = wave.shape[-1] / rate
    by_config: dict[FeatureConfig, ClipWindows] = {}
    for cfg in configs:
        if cfg in by_config:
            continue
        windows = extract_windows(wave, rate, cfg)
        by_config[cfg] = ClipWindows(
            features=windows.features.float().contiguous(),
            start_s=[float(s) for s in windows.start_seconds],
            window_s=cfg.target_frames * FRAME_SHIFT_MS / 1000.0,
        )
    return Featurized(duration, by_config, time.perf_counter() - started)
