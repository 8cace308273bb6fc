"""One adapter in host memory (:class:`AdapterCheckpoint`), and loading one from disk or bytes.

Loading never unpickles and reads no tensor before the manifest, the limits, the file size, the
checksum and the header (names, shapes, dtypes) have been checked; files and uploads take the
same path (:func:`lookaside.checkpoint.validate.validate_weights`). Saving is atomic
(:func:`lookaside.checkpoint.atomic.write_dir_atomic`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import ValidationError
from safetensors.torch import save as serialize_tensors
from torch import Tensor

from lookaside.adapters.shapes import expected_shapes
from lookaside.backbone import VisionTransformer
from lookaside.checkpoint.atomic import write_dir_atomic
from lookaside.checkpoint.compat import require_backbone
from lookaside.checkpoint.finite import check_finite
from lookaside.checkpoint.header import FLOAT_DTYPES, check_header
from lookaside.checkpoint.limits import CheckpointLimits
from lookaside.checkpoint.manifest import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AdapterManifest,
    BackboneRef,
    bounded_file,
    describe,
    load_manifest,
    parse_manifest,
)
from lookaside.checkpoint.validate import check_backbone, validate_weights
from lookaside.errors import ConfigError, InvalidCheckpoint
from lookaside.features import FeatureConfig

if TYPE_CHECKING:  # the bank imports lookaside.checkpoint: no runtime import back
    from lookaside.bank import AdapterBank

__all__ = [
    "AdapterCheckpoint",
    "ValidatedCheckpoint",
    "load_checkpoint",
    "validate_checkpoint_bytes",
]


@dataclass
class AdapterCheckpoint:
    """One adapter in host memory: its manifest and its tensors (sites + ``head.*``, CPU)."""

    manifest: AdapterManifest
    """What the adapter is; after :meth:`save`, the manifest as written."""
    tensors: dict[str, Tensor]
    """Checkpoint keys (``blocks.<i>.<site>.<param>``, ``head.*``) -> tensors, no slot dim."""

    @classmethod
    def from_bank(
        cls,
        bank: AdapterBank,
        adapter_id: str,
        *,
        name: str,
        version: int,
        task: str,
        task_type: Literal["multiclass", "multilabel"],
        labels: Sequence[str],
        features: FeatureConfig,
        backbone: VisionTransformer,
        metrics: Mapping[str, float] | None = None,
    ) -> AdapterCheckpoint:
        """Snapshot one adapter of a bank (copies, so later training does not change it).

        The head's pooling and class count come from the bank; ``labels`` and ``task_type`` must
        agree with them. ``weights_sha256`` is the hash of the serialised tensors, i.e. of the
        file :meth:`save` writes.
        """
        if bank.backbone_cfg != backbone.cfg:
            raise ConfigError("the bank was built for another backbone config than `backbone`")
        if bank.fingerprint is not None and bank.fingerprint != backbone.fingerprint():
            raise ConfigError(
                f"the bank was built for backbone {bank.fingerprint}, not for `backbone` "
                f"({backbone.fingerprint()}): pass the backbone the adapter was trained with"
            )
        entry = bank.entries.get(adapter_id)
        if entry is None:
            raise ConfigError(f"adapter {adapter_id!r} is not in the bank; it has: {bank.ids()}")
        head = bank.head(adapter_id).cfg
        if head.num_classes != len(labels):
            raise ConfigError(f"{len(labels)} labels for a head with {head.num_classes} classes")
        if head.multi_label != (task_type == "multilabel"):
            kind = "multi-label" if head.multi_label else "single-label"
            raise ConfigError(f"task_type {task_type!r} does not match the {kind} head")
        tensors = _to_cpu(bank.adapter_tensors(adapter_id))
        params = bank.num_adapter_params(adapter_id)
        try:
            manifest = AdapterManifest(
                name=name,
                version=version,
                task=task,
                task_type=task_type,
                method=entry.method,
                config=entry.config.model_dump(mode="json"),
                labels=list(labels),
                pool=head.pool,
                features=features,
                backbone=BackboneRef.of(backbone),
                metrics=dict(metrics or {}),
                trainable_params=params,
                trainable_percent=100.0 * params / backbone.num_params,
                weights_sha256=hashlib.sha256(_serialize(tensors)).hexdigest(),
            )
        except ValidationError as exc:
            raise ConfigError(f"invalid checkpoint manifest: {describe(exc)}") from None
        return cls(manifest, tensors)

    def save(self, directory: Path, *, overwrite: bool = False) -> AdapterManifest:
        """Write ``manifest.json`` + ``adapter.safetensors`` into ``directory``, atomically.

        Both files are written and fsynced in a temporary sibling directory that is then renamed
        to ``directory`` (:func:`write_dir_atomic`), so readers see the whole adapter or nothing.
        The tensors are checked first (names, shapes, finite values), so what is saved can be
        loaded. The manifest written carries the sha256 of the bytes written; it is returned and
        kept in ``self.manifest``.

        With ``overwrite=True`` an existing adapter is replaced (moved aside, the new one renamed
        in, the old one deleted; restored if the rename fails). Without it a non-empty existing
        directory raises :class:`FileExistsError`.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise FileExistsError(f"{directory} exists and is not a directory")
        if directory.is_dir() and any(directory.iterdir()) and not overwrite:
            raise FileExistsError(
                f"{directory} already holds files; pass overwrite=True to replace"
            )
        tensors = _to_cpu(self.tensors)
        _check_tensors(self.manifest, tensors)
        data = _serialize(tensors)
        manifest = self.manifest.model_copy(
            update={"weights_sha256": hashlib.sha256(data).hexdigest()}
        )
        text = json.dumps(
            manifest.model_dump(mode="json"), sort_keys=True, indent=2, allow_nan=False
        )
        write_dir_atomic(
            directory,
            {WEIGHTS_FILE: data, MANIFEST_FILE: (text + "\n").encode("utf-8")},
            overwrite=overwrite,
        )
        self.manifest = manifest
        return manifest

    def load_into(self, bank: AdapterBank, adapter_id: str | None = None) -> str:
        """Add this adapter to ``bank`` (under ``adapter_id``, default ``name@version``).

        Returns the id used. The bank's backbone fingerprint must be the manifest's, whatever
        the checkpoint was loaded with, so an adapter never enters a bank of another backbone.

        Raises:
            ConfigError: the bank has no fingerprint (build it with ``AdapterBank.for_backbone``).
            IncompatibleBackbone: the bank serves another backbone.
        """
        if bank.fingerprint is None:
            raise ConfigError(
                f"cannot check checkpoint {self.manifest.id} against this bank: it has no backbone "
                "fingerprint; build it with AdapterBank.for_backbone(backbone)"
            )
        require_backbone(
            self.manifest,
            name=bank.backbone_cfg.name,
            fingerprint=bank.fingerprint,
            where="this bank serves",
        )
        adapter_id = adapter_id or self.manifest.id
        bank.add(
            adapter_id,
            self.manifest.method,
            self.manifest.config,
            self.manifest.head_config(),
            self.tensors,
        )
        return adapter_id


@dataclass
class ValidatedCheckpoint(AdapterCheckpoint):
    """An :class:`AdapterCheckpoint` whose every tensor was checked (names, shapes, dtypes, finite
    values) by :func:`load_checkpoint` or :func:`validate_checkpoint_bytes`, the only functions
    that construct one. The bank skips its own finite scan for this type (a type, not a flag
    passed along: nothing else can claim it)."""

    def with_manifest(self, manifest: AdapterManifest) -> ValidatedCheckpoint:
        """The same validated tensors under ``manifest`` (the store's version of an upload;
        only the version and bookkeeping fields may differ, which the tensors do not depend
        on)."""
        return ValidatedCheckpoint(manifest, self.tensors)


def load_checkpoint(
    directory: Path,
    *,
    backbone: VisionTransformer | None = None,
    max_bytes: int | None = None,
    limits: CheckpointLimits | None = None,
) -> ValidatedCheckpoint:
    """Read and fully validate one adapter directory; never unpickles.

    Order, cheapest and safest first: the manifest (schema), the backbone fingerprint (when
    ``backbone`` is given; :meth:`AdapterCheckpoint.load_into` checks it against the bank in any
    case), the file size, the limits and expected shapes (arithmetic / meta device), the sha256,
    the safetensors header (every tensor's name, shape and dtype) and only then the tensor data,
    which must be finite. ``max_bytes`` overrides ``limits.max_weights_bytes``.

    Raises:
        IncompatibleBackbone: ``backbone`` is not the one the adapter was trained on.
        InvalidCheckpoint: anything else is wrong; the message lists every problem found at the
            failing step.
    """
    directory = Path(directory)
    limits = limits or CheckpointLimits()
    if max_bytes is not None:
        limits = limits.model_copy(update={"max_weights_bytes": max_bytes})
    manifest = load_manifest(directory, max_bytes=limits.max_manifest_bytes)
    if backbone is not None:  # before reading the weights: the cheapest refusal
        check_backbone(manifest, backbone)
    path = bounded_file(
        directory,
        WEIGHTS_FILE,
        limits.max_weights_bytes,
        "max_bytes" if max_bytes is not None else "max_weights_bytes",
    )
    tensors = validate_weights(
        manifest, path.read_bytes(), backbone=backbone, limits=limits, where=str(path)
    )
    return ValidatedCheckpoint(manifest, tensors)


def validate_checkpoint_bytes(
    manifest_bytes: bytes,
    weights_bytes: bytes,
    *,
    backbone: VisionTransformer | None,
    limits: CheckpointLimits | None = None,
) -> ValidatedCheckpoint:
    """Validate an upload (manifest + safetensors bytes) exactly as :func:`load_checkpoint`
    validates a directory; nothing the upload controls sizes an allocation before it is checked.

    Raises:
        IncompatibleBackbone: the adapter was made for another backbone than ``backbone``.
        InvalidCheckpoint: anything else; the message says what is wrong and what is allowed.
    """
    limits = limits or CheckpointLimits()
    manifest = parse_manifest(
        manifest_bytes, where="uploaded manifest", max_bytes=limits.max_manifest_bytes
    )
    tensors = validate_weights(
        manifest, weights_bytes, backbone=backbone, limits=limits, where="uploaded weights"
    )
    return ValidatedCheckpoint(manifest, tensors)


def _check_tensors(manifest: AdapterManifest, tensors: Mapping[str, Tensor]) -> None:
    """The load-time checks, applied before saving (a checkpoint we write must load).

    The tensors already exist in memory, so no upload limit applies to their shapes here.
    """
    dtypes = {v: k for k, v in FLOAT_DTYPES.items()}
    try:
        expected = expected_shapes(
            manifest.backbone.backbone_config(),
            manifest.method,
            manifest.config,
            manifest.head_config(),
        )
    except (ConfigError, ValidationError) as exc:
        raise InvalidCheckpoint(f"checkpoint {manifest.id} cannot be built: {exc}") from None
    check_header(
        manifest,
        expected,
        {n: (tuple(t.shape), dtypes.get(t.dtype, str(t.dtype))) for n, t in tensors.items()},
    )
    check_finite(manifest, tensors)


def _to_cpu(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # Own, contiguous CPU copies: safetensors refuses shared or strided storage.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def _serialize(tensors: Mapping[str, Tensor]) -> bytes:
    return serialize_tensors(dict(tensors), metadata={"format": "pt"})
