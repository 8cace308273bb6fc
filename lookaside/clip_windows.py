"""File bytes -> a clip's windows under each feature config: what ``POST /classify`` and
``lookaside-train predict`` both run (:mod:`service.featurize` maps the errors to HTTP answers),
so the two cannot drift.

A clip is decoded once (downmixed, and resampled while decoding when the configs share a rate)
and featurised once per distinct :class:`~lookaside.features.FeatureConfig` with the library's
:func:`~lookaside.features.extract_windows`, so serving and predicting reproduce training. Work
is bounded before it is done: the decoder stops at the decoded-sample budget, and the windows
every config would make are counted by arithmetic before any is built.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor

from lookaside.decode import decode_audio
from lookaside.errors import LookasideError
from lookaside.features import FeatureConfig, extract_windows, window_count

__all__ = [
    "ClipWindows",
    "Featurized",
    "TooManyWindows",
    "check_windows",
    "featurize_clip",
    "featurize_wave",
]


class TooManyWindows(LookasideError):
    """A clip would make more windows (summed over the configs named) or more feature bytes
    than allowed. The fields let each caller word its own advice.

    Attributes:
        reason: ``too_many_rows`` or ``too_many_features``.
        seconds: the clip's decoded length.
        counts: windows per config named (repeats included).
        total: the windows (``too_many_rows``) or feature bytes (``too_many_features``).
        limit: the limit ``total`` passes.
    """

    def __init__(
        self, reason: str, *, seconds: float, counts: list[int], total: int, limit: int
    ) -> None:
        what = "windows" if reason == "too_many_rows" else "bytes of features"
        super().__init__(
            f"the {seconds:.1f} s clip makes {total} {what}, over the limit of {limit}"
        )
        self.reason, self.seconds, self.counts = reason, seconds, counts
        self.total, self.limit = total, limit


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
    """What scoring needs from one file."""

    duration_s: float
    """Length of the decoded clip."""
    by_config: dict[FeatureConfig, ClipWindows]
    seconds: float
    """Time spent decoding and featurising (for the metrics)."""


def featurize_clip(
    data: bytes,
    configs: Iterable[FeatureConfig],
    *,
    max_seconds: float,
    max_samples: int | None = None,
    max_rows: int | None = None,
    max_feature_bytes: int | None = None,
) -> Featurized:
    """Decode ``data`` once and featurise it once per distinct config.

    Args:
        data: the file's bytes.
        configs: one feature config per adapter (repeats allowed).
        max_seconds: longest clip accepted.
        max_samples: budget of decoded samples.
        max_rows: most windows summed over ``configs``, counted before any is built.
        max_feature_bytes: most bytes of float32 windows over the distinct configs.

    Raises:
        BadAudio: the file is empty, not audio, truncated, too long, too short, over the
            decoded-sample budget or at an implausible sample rate.
        TooManyWindows: over ``max_rows`` or ``max_feature_bytes``.
    """
    started = time.perf_counter()
    configs = list(configs)
    rates = {cfg.sample_rate for cfg in configs}
    wave, rate = decode_audio(
        data,
        max_seconds=max_seconds,
        max_samples=max_samples,
        mono=True,
        # one feature rate (the usual case): resampled while decoding, never held at the file's
        resample_to=rates.pop() if len(rates) == 1 else None,
    )
    check_windows(wave.shape[-1], rate, configs, max_rows, max_feature_bytes)
    by_config = featurize_wave(wave, rate, configs)
    return Featurized(wave.shape[-1] / rate, by_config, time.perf_counter() - started)


def featurize_wave(
    wave: Tensor, rate: int, configs: Iterable[FeatureConfig]
) -> dict[FeatureConfig, ClipWindows]:
    """A decoded mono clip's windows, once per distinct config: the step after decoding that
    :func:`featurize_clip` runs, and the one a ``/stream`` window runs on the samples it cut, so
    a streamed window equals ``/classify`` on the same samples.

    ``wave`` is ``[samples]`` float32 at ``rate`` (downmixed; resampled to the config's rate
    here unless it is at it already). The caller bounds its length.
    """
    by_config: dict[FeatureConfig, ClipWindows] = {}
    for cfg in configs:
        if cfg in by_config:
            continue
        windows = extract_windows(wave, rate, cfg)
        by_config[cfg] = ClipWindows(
            features=windows.features.float().contiguous(),
            start_s=[float(s) for s in windows.start_seconds],
            window_s=cfg.window_seconds,
        )
    return by_config


def check_windows(
    num_samples: int,
    rate: int,
    configs: list[FeatureConfig],
    max_rows: int | None,
    max_bytes: int | None,
) -> None:
    """Refuse a clip whose windows pass ``max_rows`` (summed over ``configs``) or would hold
    more than ``max_bytes`` of features (configs repeated share their windows, so each distinct
    config counts once: ``windows x target_frames x num_mel_bins x 4``).

    Counted by arithmetic (:func:`~lookaside.features.window_count`, once per distinct config),
    so a tiny hop over a long clip is refused before its windows are built.
    """
    windows = {cfg: window_count(num_samples, rate, cfg) for cfg in dict.fromkeys(configs)}
    seconds = num_samples / rate
    counts = [windows[cfg] for cfg in configs]
    if max_rows is not None and sum(counts) > max_rows:
        raise TooManyWindows(
            "too_many_rows", seconds=seconds, counts=counts, total=sum(counts), limit=max_rows
        )
    total = sum(n * cfg.target_frames * cfg.num_mel_bins * 4 for cfg, n in windows.items())
    if max_bytes is not None and total > max_bytes:
        raise TooManyWindows(
            "too_many_features", seconds=seconds, counts=counts, total=total, limit=max_bytes
        )
