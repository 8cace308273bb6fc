"""Checkpoint validation that allocates nothing an upload controls (docs/design.md §4).

One path (:func:`validate_weights`) serves files on disk and uploads in memory, cheapest and
safest step first: the backbone (fingerprint, and the recorded config equal to the server's),
the manifest limits (:mod:`~lookaside.checkpoint.limits`), the weights' size, expected shapes
from the ``meta`` device and arithmetic (never real tensors), parameters against the limit and
the file size, the sha256, the safetensors header (:mod:`~lookaside.checkpoint.header`: its
length bounded before it is parsed; names, shapes, dtypes, offsets), and only then the tensor
data, which must be finite (:mod:`~lookaside.checkpoint.finite`).
"""

from __future__ import annotations

import hashlib

from pydantic import ValidationError
from torch import Tensor

from lookaside.adapters.shapes import expected_shapes, total_numel
from lookaside.backbone import VisionTransformer
from lookaside.backbone_config import BackboneConfig
from lookaside.checkpoint.compat import require_backbone
from lookaside.checkpoint.finite import check_finite
from lookaside.checkpoint.header import MIN_ITEMSIZE, check_header, parse_header, read_tensors
from lookaside.checkpoint.limits import CheckpointLimits, check_manifest_limits
from lookaside.checkpoint.manifest import AdapterManifest, describe
from lookaside.errors import ConfigError, InvalidCheckpoint

__all__ = [
    "adapter_shapes",
    "check_backbone",
    "validate_weights",
    "weights_sha256",
]


# -- shapes without allocation ---------------------------------------------------------------


def adapter_shapes(
    manifest: AdapterManifest, backbone_cfg: BackboneConfig, limits: CheckpointLimits
) -> dict[str, tuple[int, ...]]:
    """The tensors a manifest describes (:func:`lookaside.adapters.shapes.expected_shapes`: the
    meta device and arithmetic, the same computation the bank uses), after
    :func:`check_manifest_limits`; the parameter count is checked against ``limits.max_params``
    (against the file size: :func:`validate_weights`)."""
    check_manifest_limits(manifest, backbone_cfg, limits)
    try:
        shapes = expected_shapes(
            backbone_cfg, manifest.method, manifest.config, manifest.head_config()
        )
    except (ConfigError, ValidationError, ValueError, RuntimeError) as exc:
        detail = describe(exc) if isinstance(exc, ValidationError | ValueError) else str(exc)
        raise InvalidCheckpoint(
            f"checkpoint {manifest.id}: method {manifest.method!r} with config {manifest.config} "
            f"cannot be built on backbone {backbone_cfg.name!r}: {detail}"
        ) from None
    params = total_numel(shapes)
    if params > limits.max_params:
        raise InvalidCheckpoint(
            f"checkpoint {manifest.id} ({manifest.method}) describes {params} parameters, over "
            f"max_params={limits.max_params}: use a smaller rank/width, fewer blocks or classes"
        )
    return shapes


# -- backbone --------------------------------------------------------------------------------


def check_backbone(manifest: AdapterManifest, backbone: VisionTransformer) -> None:
    """Refuse a checkpoint trained on another backbone (by fingerprint: architecture + weights),
    and one whose recorded ``backbone.config`` is not this backbone's config.

    The fingerprint alone does not prove the recorded config (an edited manifest can keep the
    fingerprint and claim ``depth: 1000000``), and code that reads the manifest's config (shapes
    without a backbone, listings) must see the real one. The display name is left out of the
    comparison as it is of the fingerprint, and so is ``image_size`` without an RGB kernel.

    Raises:
        IncompatibleBackbone: another fingerprint.
        InvalidCheckpoint: the same fingerprint with another (or unusable) config.
    """
    ref = manifest.backbone
    require_backbone(
        manifest, name=backbone.cfg.name, fingerprint=backbone.fingerprint(), source=backbone.source
    )
    excluded = {"name"} if backbone.cfg.has_rgb_kernel else {"name", "image_size"}
    recorded = ref.backbone_config().model_dump(mode="json", exclude=excluded)
    actual = backbone.cfg.model_dump(mode="json", exclude=excluded)
    differ = [k for k in sorted(actual) if recorded.get(k) != actual[k]]
    if differ:
        shown = "; ".join(
            f"backbone.config.{k}={_short(recorded.get(k))} (this server: {_short(actual[k])})"
            for k in differ
        )
        raise InvalidCheckpoint(
            f"checkpoint {manifest.id}: its manifest records backbone fingerprint "
            f"{ref.fingerprint} but a different config: {shown}. The recorded config must equal "
            "the backbone's; export the manifest again from the training run"
        )


def _short(value: object, limit: int = 64) -> str:
    """``repr`` of a value, cut to ``limit`` characters (messages stay one readable line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def weights_sha256(data: bytes | memoryview) -> str:
    """Hex sha256 of the weights bytes (what ``manifest.weights_sha256`` records)."""
    return hashlib.sha256(data).hexdigest()


# -- the one validation path -----------------------------------------------------------------


def validate_weights(
    manifest: AdapterManifest,
    weights: bytes,
    *,
    backbone: VisionTransformer | None,
    limits: CheckpointLimits,
    where: str = "adapter.safetensors",
) -> dict[str, Tensor]:
    """Check ``weights`` against a parsed ``manifest``; return its tensors (CPU, own memory).

    Order: backbone fingerprint (when ``backbone`` is given; otherwise the manifest's recorded
    config is used for shapes), weights size, manifest limits, expected shapes (meta device) and
    parameters against ``max_params``, sha256, header format (length bounded first), parameters
    against the file size, header names/shapes/dtypes, the manifest's parameter count, tensor
    data, finite.

    Raises:
        IncompatibleBackbone: ``backbone`` is not the one the adapter was trained on.
        InvalidCheckpoint: anything else; the message says what is wrong and what is allowed.
    """
    if backbone is not None:
        check_backbone(manifest, backbone)
        backbone_cfg = backbone.cfg
    else:
        backbone_cfg = manifest.backbone.backbone_config()
    if len(weights) > limits.max_weights_bytes:
        raise InvalidCheckpoint(
            f"{where} is {len(weights)} bytes, over the limit of {limits.max_weights_bytes} "
            "bytes (max_weights_bytes)"
        )
    expected = adapter_shapes(manifest, backbone_cfg, limits)
    digest = weights_sha256(weights)
    if digest != manifest.weights_sha256:
        raise InvalidCheckpoint(
            f"{where} has sha256 {digest}, but the manifest says {manifest.weights_sha256}: "
            "the file is corrupt or does not belong to this manifest"
        )
    entries, _ = parse_header(weights, where=where, max_header_bytes=limits.max_header_bytes)
    params = total_numel(expected)
    if params * MIN_ITEMSIZE > len(weights):  # cheap summary before the per-tensor report
        raise InvalidCheckpoint(
            f"checkpoint {manifest.id} ({manifest.method}) describes {params} parameters, which "
            f"need at least {params * MIN_ITEMSIZE} bytes at {MIN_ITEMSIZE} bytes each, but "
            f"{where} holds {len(weights)}: the manifest does not describe these weights"
        )
    check_header(manifest, expected, {n: (e.shape, e.dtype) for n, e in entries.items()})
    if manifest.trainable_params != params:  # shown to clients: it must be the real count
        raise InvalidCheckpoint(
            f"checkpoint {manifest.id}: the manifest says trainable_params="
            f"{manifest.trainable_params}, but its tensors hold {params} parameters"
        )
    tensors = read_tensors(weights, entries)
    check_finite(manifest, tensors)
    return tensors
