"""Upload bytes -> per-feature-config windows, run in a thread pool before anything is queued.

The work is :func:`lookaside.clip_windows.featurize_clip` (``lookaside-train predict`` runs the
same function, so the two cannot drift): a request is decoded once; each distinct
:class:`~lookaside.features.FeatureConfig` among the adapters it names is featurised once
(adapters trained with the same config share the tensor), with exactly the library's
:func:`~lookaside.features.extract_windows`, so serving reproduces training. Every failure here is
the request's own (:class:`~lookaside.errors.BadAudio`, or 413 for too many windows), raised
before a batch could see it. Work is bounded before it is done: the decoder stops at the
decoded-sample budget, and the windows every adapter would make are counted by arithmetic before
any is built.
"""

from __future__ import annotations

from collections.abc import Iterable

from lookaside.clip_windows import ClipWindows, Featurized, TooManyWindows, featurize_clip
from lookaside.features import FeatureConfig
from service.errors import PayloadTooLarge

__all__ = ["ClipWindows", "Featurized", "featurize", "too_large"]


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
    try:
        return featurize_clip(
            data,
            configs,
            max_seconds=max_seconds,
            max_samples=max_samples,
            max_rows=max_rows,
            max_feature_bytes=max_feature_bytes,
        )
    except TooManyWindows as exc:
        raise too_large(exc) from None


def too_large(exc: TooManyWindows) -> PayloadTooLarge:
    """The 413 of a clip over a request's window or feature-byte limit, with the setting to
    raise."""
    if exc.reason == "too_many_rows":
        each = ", ".join(str(c) for c in exc.counts)
        return PayloadTooLarge(
            f"the {exc.seconds:.1f} s clip makes {exc.total} windows over the "
            f"{len(exc.counts)} adapter(s) named ({each}), over the limit of {exc.limit} "
            "windows per request; send a shorter clip, name fewer adapters per request, or "
            "raise LOOKASIDE_MAX_REQUEST_ROWS",
            reason="too_many_rows",
        )
    mib = 1024 * 1024
    return PayloadTooLarge(
        f"the {exc.seconds:.1f} s clip's windows would hold {exc.total / mib:.1f} MiB of "
        f"features for the adapters named, over the limit of {exc.limit / mib:.1f} MiB per "
        "request; send a shorter clip, name fewer adapters with different feature settings, "
        "or raise LOOKASIDE_MAX_REQUEST_FEATURE_BYTES",
        reason="too_many_features",
    )
