"""Adapter checkpoints: a validated JSON manifest beside a safetensors file (NOTES §4).

One adapter on disk is a directory holding exactly two files:

- ``manifest.json``: an :class:`AdapterManifest` (name, version, task, method + config, labels,
  feature config, backbone id + fingerprint, metrics, parameter count, sha256 of the weights),
  written with sorted keys like PEFT's ``adapter_config.json``;
- ``adapter.safetensors``: the adapter's tensors (sites + ``head.*``) keyed without the runtime
  adapter id, so any name/version loads into any slot.

Loading never unpickles and reads no tensor before the manifest, the file size, the checksum and
the header (names, shapes, dtypes) have been checked (as vLLM checks keys before ``get_tensor``).
A checkpoint made for another backbone is refused with :class:`IncompatibleBackbone`. Unknown
manifest keys are ignored with a :class:`ManifestWarning`, so an older reader can still load a
checkpoint written by a newer one (PEFT's forward-compatible config parsing).

Saving is atomic: both files are written and fsynced in a temporary directory beside the target,
which is then renamed into place, so a crash never leaves a half-written adapter.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as serialize_tensors
from torch import Tensor

from lookaside import __version__
from lookaside.adapters import ADAPTERS, get_method
from lookaside.adapters.base import AdapterConfig
from lookaside.adapters.head import HeadConfig
from lookaside.backbone import BackboneConfig, VisionTransformer
from lookaside.checkpoint.validate import tensor_problems
from lookaside.errors import ConfigError, IncompatibleBackbone, InvalidCheckpoint
from lookaside.features import FeatureConfig

if TYPE_CHECKING:
    from lookaside.adapters.bank import AdapterBank

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "AdapterCheckpoint",
    "AdapterManifest",
    "BackboneRef",
    "ManifestWarning",
    "load_checkpoint",
    "load_manifest",
]

FORMAT_VERSION = 1
"""Newest manifest format this code reads and the one it writes."""
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "adapter.safetensors"
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
"""Largest ``adapter.safetensors`` accepted by default (a LoAA r=72 ViT-B adapter is ~35 MB)."""
MAX_MANIFEST_BYTES = 1024 * 1024
"""A manifest is a few kB; anything far larger is not one, so it is refused unread."""
FLOAT_DTYPES = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
"""safetensors header dtypes accepted for adapter tensors (every adapter tensor is a weight)."""

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_HEX64 = r"^[0-9a-f]{64}$"


class ManifestWarning(UserWarning):
    """A manifest carried something this version ignores (keys written by a newer version)."""


class _Lenient(BaseModel):
    """Base for manifest models: unknown keys are dropped with a warning, not refused.

    A checkpoint written by a newer Lookaside (with a field this one does not know) still loads,
    and the user is told what was ignored.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _drop_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return _drop_unknown(cls.__name__, cls, data)
        return data


def _drop_unknown(where: str, model: type[BaseModel], data: Mapping[Any, Any]) -> Any:
    """``data`` without the keys ``model`` does not know, warning once about them."""
    unknown = sorted(str(k) for k in data if k not in model.model_fields)
    if not unknown:
        return data
    warnings.warn(
        f"{where}: ignoring unknown keys {unknown} (written by a newer lookaside version?)",
        ManifestWarning,
        stacklevel=2,
    )
    return {k: v for k, v in data.items() if k in model.model_fields}


class BackboneRef(_Lenient):
    """The backbone an adapter was trained on: enough to refuse another one and to say which."""

    source: str
    """Where its weights came from: ``timm:<name>``, ``hf:<repo>``, ``file:<path>``, ``random:``."""
    name: str = Field(min_length=1)
    """Architecture name from its config, e.g. ``vit_base_patch16``."""
    fingerprint: str = Field(pattern=r"^[0-9a-f]{8,64}$")
    """:meth:`VisionTransformer.fingerprint`: hash of config + weights."""
    config: dict[str, Any]
    """:class:`BackboneConfig` as JSON; kept as a dict so newer config keys do not break parsing."""

    @classmethod
    def of(cls, backbone: VisionTransformer) -> BackboneRef:
        """The reference to a loaded backbone."""
        return cls(
            source=backbone.source,
            name=backbone.cfg.name,
            fingerprint=backbone.fingerprint(),
            config=backbone.cfg.model_dump(mode="json"),
        )

    def backbone_config(self) -> BackboneConfig:
        """The recorded config, validated (raises :class:`InvalidCheckpoint` if unusable)."""
        try:
            return BackboneConfig.model_validate(self.config)
        except (ValidationError, ValueError) as exc:
            raise InvalidCheckpoint(
                f"manifest backbone.config is not a usable backbone config: {_describe(exc)}"
            ) from None


class AdapterManifest(_Lenient):
    """Everything about one adapter except its tensors; ``manifest.json`` on disk."""

    format_version: int = FORMAT_VERSION
    """Manifest format; a reader refuses formats newer than :data:`FORMAT_VERSION`."""
    name: str
    """Adapter name: lower-case letters, digits, ``-``, ``_``; 1-64 chars; starts alphanumeric."""
    version: int = Field(ge=1)
    """Version of this name; ``name@version`` identifies the adapter."""
    task: str
    """Free-text task description, e.g. ``environmental sounds``."""
    task_type: Literal["multiclass", "multilabel"]
    """Softmax over classes, or one sigmoid per class."""
    method: str
    """Adapter method, a key of :data:`lookaside.adapters.ADAPTERS`."""
    config: dict[str, Any]
    """The method's config, normalised (defaults filled in) by the method's config class."""
    labels: list[str] = Field(min_length=1)
    """Class names, in logit order; unique."""
    pool: Literal["cls", "mean"] = "cls"
    """Head pooling (see :class:`HeadConfig`)."""
    features: FeatureConfig
    """How audio becomes the spectrogram this adapter was trained on."""
    backbone: BackboneRef
    """The backbone it was trained on."""
    metrics: dict[str, FiniteFloat] = Field(default_factory=dict)
    """Evaluation results, e.g. ``{"accuracy": 0.93}``."""
    trainable_params: int = Field(ge=0)
    """Parameters of the adapter, head included."""
    trainable_percent: float = Field(ge=0, allow_inf_nan=False)
    """``100 * trainable_params / backbone parameters``."""
    weights_sha256: str = Field(pattern=_HEX64)
    """sha256 of the ``adapter.safetensors`` bytes."""
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    """Creation time, UTC."""
    lookaside_version: str = __version__
    """Version of the library that wrote it."""

    @field_validator("format_version")
    @classmethod
    def _known_format(cls, v: int) -> int:
        if not 1 <= v <= FORMAT_VERSION:
            raise ValueError(
                f"format_version {v} is not supported; this lookaside ({__version__}) reads "
                f"formats 1..{FORMAT_VERSION}: upgrade lookaside to load it"
            )
        return v

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError(
                f"name {v!r} must be 1-64 characters of lower-case letters, digits, '-' and '_', "
                "starting with a letter or digit"
            )
        return v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in ADAPTERS:
            raise ValueError(f"unknown adapter method {v!r}; choose one of: {', '.join(ADAPTERS)}")
        return v

    @field_validator("config")
    @classmethod
    def _valid_config(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        method = info.data.get("method")
        if method is None:  # the method itself failed; its error is reported instead
            return v
        try:
            parsed = get_method(method).parse_config(v)
        except (ValidationError, ValueError) as exc:
            raise ValueError(f"invalid config for method {method!r}: {_describe(exc)}") from None
        return parsed.model_dump(mode="json")

    @field_validator("features", mode="before")
    @classmethod
    def _lenient_features(cls, v: Any) -> Any:
        # FeatureConfig forbids unknown keys (right for user input); a manifest only warns.
        if isinstance(v, Mapping):
            return _drop_unknown("features", FeatureConfig, v)
        return v

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, v: list[str]) -> list[str]:
        empty = [i for i, label in enumerate(v) if not label.strip()]
        if empty:
            raise ValueError(f"labels at positions {empty} are empty")
        dupes = sorted(label for label, n in Counter(v).items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate labels {dupes}; each class needs a unique label")
        return v

    @field_validator("created")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)

    @property
    def id(self) -> str:
        """``name@version``: the adapter id requests and the bank use."""
        return f"{self.name}@{self.version}"

    def head_config(self) -> HeadConfig:
        """The classification head this adapter was trained with."""
        return HeadConfig(
            num_classes=len(self.labels),
            pool=self.pool,
            multi_label=self.task_type == "multilabel",
        )

    def adapter_config(self) -> AdapterConfig:
        """The method's typed config."""
        return get_method(self.method).parse_config(self.config)


def _bounded_file(directory: Path, name: str, limit: int, limit_name: str) -> Path:
    """``directory/name`` if it exists and is at most ``limit`` bytes (checked before reading)."""
    path = directory / name
    if not path.is_file():
        raise InvalidCheckpoint(f"{directory} has no {name}")
    size = path.stat().st_size
    if size > limit:
        raise InvalidCheckpoint(
            f"{path} is {size} bytes, over the limit of {limit} bytes ({limit_name})"
        )
    return path


def load_manifest(directory: Path) -> AdapterManifest:
    """Read and validate ``manifest.json`` alone (cheap: no tensor is touched).

    Raises:
        InvalidCheckpoint: missing, oversized, not JSON, or not a valid manifest; the message
            names every offending field.
    """
    path = _bounded_file(Path(directory), MANIFEST_FILE, MAX_MANIFEST_BYTES, "a manifest's limit")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidCheckpoint(f"{path} is not UTF-8 text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidCheckpoint(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidCheckpoint(f"{path} is nested too deeply to be a manifest") from None
    if not isinstance(raw, dict):
        raise InvalidCheckpoint(f"{path} must hold a JSON object, got {type(raw).__name__}")
    try:
        return AdapterManifest.model_validate(raw)
    except ValidationError as exc:
        raise InvalidCheckpoint(f"{path} is not a valid manifest: {_describe(exc)}") from None


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
            raise ConfigError(f"invalid checkpoint manifest: {_describe(exc)}") from None
        return cls(manifest, tensors)

    def save(self, directory: Path, *, overwrite: bool = False) -> AdapterManifest:
        """Write ``manifest.json`` + ``adapter.safetensors`` into ``directory``, atomically.

        Both files are written and fsynced in a temporary sibling directory that is then renamed
        to ``directory``, so readers see the whole adapter or nothing. The tensors are checked
        first (names, shapes, finite values), so what is saved can be loaded. The manifest
        written carries the sha256 of the bytes written; it is returned and kept in
        ``self.manifest``.

        With ``overwrite=True`` an existing adapter is replaced (moved aside, the new one renamed
        in, the old one deleted; restored if the rename fails). Without it a non-empty existing
        directory raises :class:`FileExistsError`.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise FileExistsError(f"{directory} exists and is not a directory")
        occupied = directory.is_dir() and any(directory.iterdir())
        if occupied and not overwrite:
            raise FileExistsError(
                f"{directory} already holds files; pass overwrite=True to replace"
            )
        tensors = _to_cpu(self.tensors)
        _check_tensors(self.manifest, self.manifest.backbone.backbone_config(), tensors)
        data = _serialize(tensors)
        manifest = self.manifest.model_copy(
            update={"weights_sha256": hashlib.sha256(data).hexdigest()}
        )
        text = json.dumps(
            manifest.model_dump(mode="json"), sort_keys=True, indent=2, allow_nan=False
        )

        parent = directory.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the serving user must read it
            _write_synced(tmp / WEIGHTS_FILE, data)
            _write_synced(tmp / MANIFEST_FILE, (text + "\n").encode("utf-8"))
            _fsync_dir(tmp)
            if occupied:
                _swap_in(tmp, directory)
            else:
                os.replace(tmp, directory)  # also replaces an existing empty directory
            _fsync_dir(parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.manifest = manifest
        return manifest

    def load_into(self, bank: AdapterBank, adapter_id: str | None = None) -> str:
        """Add this adapter to ``bank`` (under ``adapter_id``, default ``name@version``).

        Returns the id used. Refuses a bank built for another backbone config.
        """
        if bank.backbone_cfg != self.manifest.backbone.backbone_config():
            raise IncompatibleBackbone(
                f"checkpoint {self.manifest.id} was made for backbone config "
                f"{self.manifest.backbone.name!r}; this bank is for {bank.backbone_cfg.name!r} "
                "with a different config"
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


def load_checkpoint(
    directory: Path,
    *,
    backbone: VisionTransformer | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> AdapterCheckpoint:
    """Read and fully validate one adapter directory; never unpickles.

    Order, cheapest and safest first: the manifest (schema), the backbone fingerprint (when
    ``backbone`` is given), the file size, the sha256, the safetensors header (every tensor's
    name, shape and dtype against what the method/config/head need), and only then the tensor
    data, which must be finite.

    Raises:
        IncompatibleBackbone: ``backbone`` is not the one the adapter was trained on.
        InvalidCheckpoint: anything else is wrong; the message lists every problem found at the
            failing step.
    """
    directory = Path(directory)
    manifest = load_manifest(directory)
    if backbone is not None:
        _check_backbone(manifest, backbone)
        backbone_cfg = backbone.cfg
    else:
        backbone_cfg = manifest.backbone.backbone_config()

    path = _bounded_file(directory, WEIGHTS_FILE, max_bytes, "max_bytes")
    digest = _sha256_file(path)
    if digest != manifest.weights_sha256:
        raise InvalidCheckpoint(
            f"{path} has sha256 {digest}, but the manifest says {manifest.weights_sha256}: "
            "the file is corrupt or does not belong to this manifest"
        )

    expected = _expected_shapes(manifest, backbone_cfg)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = {name: f.get_slice(name) for name in f.keys()}  # noqa: SIM118
            _check_header(
                manifest,
                expected,
                {n: (tuple(s.get_shape()), s.get_dtype()) for n, s in header.items()},
            )
            tensors = {name: f.get_tensor(name) for name in sorted(expected)}
    except SafetensorError as exc:
        raise InvalidCheckpoint(f"{path} is not a valid safetensors file: {exc}") from None
    _check_finite(manifest, tensors)
    return AdapterCheckpoint(manifest, tensors)


# -- validation ------------------------------------------------------------------------------


def _check_backbone(manifest: AdapterManifest, backbone: VisionTransformer) -> None:
    ref = manifest.backbone
    if ref.fingerprint != backbone.fingerprint():
        raise IncompatibleBackbone(
            f"checkpoint {manifest.id} was made for backbone {ref.name}@{ref.fingerprint} "
            f"(source {ref.source}); this server runs {backbone.cfg.name}@{backbone.fingerprint()} "
            f"(source {backbone.source}). Load it with the backbone it was trained on, or "
            "retrain it on this one"
        )


def _expected_shapes(
    manifest: AdapterManifest, backbone_cfg: BackboneConfig
) -> dict[str, tuple[int, ...]]:
    from lookaside.adapters.bank import AdapterBank  # temporary: replaced by meta-device shapes

    try:
        return AdapterBank(backbone_cfg).expected_shapes(
            manifest.method, manifest.config, manifest.head_config()
        )
    except (ConfigError, ValidationError) as exc:
        raise InvalidCheckpoint(
            f"checkpoint {manifest.id}: method {manifest.method!r} with config {manifest.config} "
            f"cannot be built on backbone {backbone_cfg.name!r}: {exc}"
        ) from None


def _check_header(
    manifest: AdapterManifest,
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[tuple[int, ...], str]],
) -> None:
    """Compare the header (name -> (shape, dtype)) with the expected tensors; one message."""
    problems = tensor_problems(
        expected, {n: (shape, dtype, dtype in FLOAT_DTYPES) for n, (shape, dtype) in found.items()}
    )
    if problems:
        raise InvalidCheckpoint(
            f"checkpoint {manifest.id} ({manifest.method}) does not fit its manifest: "
            + "; ".join(problems)
        )


def _check_finite(manifest: AdapterManifest, tensors: Mapping[str, Tensor]) -> None:
    bad = sorted(name for name, t in tensors.items() if not bool(torch.isfinite(t).all()))
    if bad:
        raise InvalidCheckpoint(f"checkpoint {manifest.id}: tensors {bad} contain NaN or Inf")


def _check_tensors(
    manifest: AdapterManifest, backbone_cfg: BackboneConfig, tensors: Mapping[str, Tensor]
) -> None:
    """The load-time checks, applied before saving (a checkpoint we write must load)."""
    dtypes = {v: k for k, v in FLOAT_DTYPES.items()}
    _check_header(
        manifest,
        _expected_shapes(manifest, backbone_cfg),
        {n: (tuple(t.shape), dtypes.get(t.dtype, str(t.dtype))) for n, t in tensors.items()},
    )
    _check_finite(manifest, tensors)


def _describe(exc: ValidationError | ValueError) -> str:
    """A pydantic error as ``field.path: message; ...`` (readable in one log line)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


# -- file helpers ----------------------------------------------------------------------------


def _to_cpu(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # Own, contiguous CPU copies: safetensors refuses shared or strided storage.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def _serialize(tensors: Mapping[str, Tensor]) -> bytes:
    return serialize_tensors(dict(tensors), metadata={"format": "pt"})


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename/creation in ``path`` durable (POSIX: fsync the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(new: Path, target: Path) -> None:
    """Replace the non-empty directory ``target`` by ``new``; restore the old one on failure.

    POSIX cannot rename over a non-empty directory, so the old one is moved aside first; between
    the two renames ``target`` is briefly absent (never half-written).
    """
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
