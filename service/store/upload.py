"""One upload's checks before the store writes anything: sizes first (nothing larger is parsed),
then everything :func:`lookaside.checkpoint.validate_checkpoint_bytes` checks."""

from __future__ import annotations

from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import CheckpointLimits, ValidatedCheckpoint, validate_checkpoint_bytes
from lookaside.errors import InvalidCheckpoint
from service.errors import UploadTooLarge


def validate_upload(
    manifest_bytes: bytes,
    weights_bytes: bytes,
    backbone: VisionTransformer,
    limits: CheckpointLimits,
) -> ValidatedCheckpoint:
    """The upload parsed and checked against ``backbone`` and ``limits``; raises before any
    write (:class:`UploadTooLarge`, :class:`InvalidCheckpoint`, ``IncompatibleBackbone``)."""
    for what, data, limit in (
        ("manifest", manifest_bytes, limits.max_manifest_bytes),
        ("weights", weights_bytes, limits.max_weights_bytes),
    ):
        if len(data) > limit:
            raise UploadTooLarge(
                f"the {what} file is {len(data)} bytes, over this server's limit of {limit} "
                "bytes; upload a smaller adapter or raise the limit in the settings"
            )
    if not weights_bytes:
        raise InvalidCheckpoint("the weights file is empty; upload adapter.safetensors")
    return validate_checkpoint_bytes(
        manifest_bytes, weights_bytes, backbone=backbone, limits=limits
    )
