"""The adapter manifest (``manifest.json``): its schema, parsing and reading (docs/design.md §3).

A manifest is a small JSON file; it is parsed and schema-validated here with nothing sized by it
(its byte size is bounded before it is read). What it may describe is bounded separately, by
:class:`~lookaside.checkpoint.limits.CheckpointLimits`, before any tensor exists.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

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

from lookaside import __version__
from lookaside.adapters import ADAPTERS, get_method
from lookaside.adapters.base import AdapterConfig
from lookaside.adapters.head import HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.backbone_config import BackboneConfig
from lookaside.errors import InvalidCheckpoint
from lookaside.features import FeatureConfig

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MAX_MANIFEST_BYTES",
    "WEIGHTS_FILE",
    "AdapterManifest",
    "BackboneRef",
    "ManifestWarning",
    "load_manifest",
    "parse_manifest",
]

FORMAT_VERSION = 1
"""Newest manifest format this code reads and the one it writes."""
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "adapter.safetensors"
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
"""Largest ``adapter.safetensors`` accepted by default (a LoAA r=72 ViT-B adapter is ~35 MB)."""
MAX_MANIFEST_BYTES = 1024 * 1024
"""A manifest is a few kB; anything far larger is not one, so it is refused unread."""

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
                f"manifest backbone.config is not a usable backbone config: {describe(exc)}"
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
            raise ValueError(f"invalid config for method {method!r}: {describe(exc)}") from None
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


def bounded_file(directory: Path, name: str, limit: int, limit_name: str) -> Path:
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


def parse_manifest(
    data: bytes, *, where: str = MANIFEST_FILE, max_bytes: int = MAX_MANIFEST_BYTES
) -> AdapterManifest:
    """Validate manifest bytes (an upload's or a file's); ``where`` names them in messages.

    Raises:
        InvalidCheckpoint: oversized, not UTF-8 JSON, or not a valid manifest; the message names
            every offending field.
    """
    if len(data) > max_bytes:
        raise InvalidCheckpoint(
            f"{where} is {len(data)} bytes, over the limit of {max_bytes} bytes "
            "(a manifest's limit)"
        )
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidCheckpoint(f"{where} is not UTF-8 text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidCheckpoint(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidCheckpoint(f"{where} is nested too deeply to be a manifest") from None
    if not isinstance(raw, dict):
        raise InvalidCheckpoint(f"{where} must hold a JSON object, got {type(raw).__name__}")
    try:
        return AdapterManifest.model_validate(raw)
    except ValidationError as exc:
        raise InvalidCheckpoint(f"{where} is not a valid manifest: {describe(exc)}") from None


def load_manifest(directory: Path, *, max_bytes: int = MAX_MANIFEST_BYTES) -> AdapterManifest:
    """Read and validate ``manifest.json`` alone (cheap: no tensor is touched).

    Raises:
        InvalidCheckpoint: missing, oversized, not JSON, or not a valid manifest; the message
            names every offending field.
    """
    path = bounded_file(Path(directory), MANIFEST_FILE, max_bytes, "a manifest's limit")
    return parse_manifest(path.read_bytes(), where=str(path), max_bytes=max_bytes)


def describe(exc: ValidationError | ValueError) -> str:
    """A pydantic error as ``field.path: message; ...`` (readable in one log line)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
