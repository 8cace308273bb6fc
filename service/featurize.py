"""Upload bytes -> per-feature-config windows, run in a thread pool before anything is queued.

A request is decoded once; each distinct :class:`~lookaside.features.FeatureConfig` among the
adapters it names is featurised once (adapters trained with the same config share the tensor), with
exactly the library's :func:`~lookaside.features.extract_windows`, so serving reproduces training.
Every failure here is the request's own (:class:`~lookaside.errors.BadAudio`, or 413 for too
many windows), raised before a batch could see it. Work is bounded before it is done: the decoder
stops at the decoded-sample budget, and the windows every adapter would make are counted by
arithmetic before any is built.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor

from lookaside.decode import decode_audio
from lookaside.features import FRAME_SHIFT_MS, FeatureConfig, extract_windows, window_count
from service.errors import PayloadTooLarge


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


def featurize(
    data: bytes,
    configs: Iterable[FeatureConfig],
    *,
    max_seconds: float,
    max_samples: int | None = None,
    max_rows: int | None = None,
    max_feature_bytes: int | None = None,
) -> Featurized:
    """Decode ``data`` once (downmixed, and resampled when the configs share a rate, while
    decoding) and featurise it once per distinct config.

    Args:
        data: the uploaded file.
        configs: one feature config per adapter the request names (repeats allowed).
        max_seconds: longest clip accepted.
        max_samples: budget of decoded samples (``max_decoded_samples``).
        max_rows: most windows summed over ``configs`` (``max_request_rows``), counted by
            arithmetic from the decoded length before any feature is computed.
        max_feature_bytes: most bytes of float32 windows over the distinct configs
            (``max_request_feature_bytes``), counted the same way.

    Raises:
        BadAudio: the upload is empty, not audio, truncated, too long, too short, over the
            decoded-sample budget or at an implausible sample rate.
        PayloadTooLarge: the clip would make more windows than ``max_rows`` or more feature
            bytes than ``max_feature_bytes``.
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
    duration = wave.shape[-1] / rate
    check_windows(wave.shape[-1], rate, configs, max_rows, max_feature_bytes)
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


def check_windows(
    num_samples: int,
    rate: int,
    configs: list[FeatureConfig],
    max_rows: int | None,
    max_bytes: int | None,
) -> None:
    """Refuse (413) a clip whose windows pass ``max_rows`` (summed over the adapters named) or
    would hold more than ``max_bytes`` of features (adapters sharing a feature config share its
    windows, so each distinct config counts once: ``windows x target_frames x num_mel_bins x 4``).

    Counted by arithmetic (:func:`~lookaside.features.window_count`, once per distinct config),
    so an adapter with a tiny hop over a long clip is refused before its windows are built.
    """
    windows = {cfg: window_count(num_samples, rate, cfg) for cfg in dict.fromkeys(configs)}
    seconds = num_samples / rate
    counts = [windows[cfg] for cfg in configs]
    if max_rows is not None and sum(counts) > max_rows:
        each = ", ".join(str(c) for c in counts)
        raise PayloadTooLarge(
            f"the {seconds:.1f} s clip makes {sum(counts)} windows over the {len(counts)} "
            f"adapter(s) named ({each}), over the limit of {max_rows} windows per request; send "
            "a shorter clip, name fewer adapters per request, or raise "
            "LOOKASIDE_MAX_REQUEST_ROWS",
            reason="too_many_rows",
        )
    total = sum(n * cfg.target_frames * cfg.num_mel_bins * 4 for cfg, n in windows.items())
    if max_bytes is not None and total > max_bytes:
        mib = 1024 * 1024
        raise PayloadTooLarge(
            f"the {seconds:.1f} s clip's windows would hold {total / mib:.1f} MiB of "
            f"features for the adapters named, over the limit of {max_bytes / mib:.1f} MiB per "
            "request; send a shorter clip, name fewer adapters with different feature settings, "
            "or raise LOOKASIDE_MAX_REQUEST_FEATURE_BYTES",
            reason="too_many_features",
        )
