"""The adapter manifest (``manifest.json``) and the limits an upload must stay within
(docs/design.md §3).

A manifest is a small JSON file; it is parsed and schema-validated here with nothing sized by it.
:class:`CheckpointLimits` bounds everything a manifest could make large (bottleneck widths,
experts, prompt tokens, labels, parameters, file sizes, and the work one request costs: sample
rate, mel bins, frames, tokens per window, window overlap, clip length);
:mod:`lookaside.checkpoint.validate` applies them before any tensor exists.
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
    "CheckpointLimits",
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


class CheckpointLimits(BaseModel):
    """How large an adapter may be; checked before anything it describes is allocated.

    The defaults admit every adapter of the papers on ViT-B/L with a wide margin; a service can
    tighten them (e.g. ``CheckpointLimits(max_labels=1000)``). Each refusal names the limit and
    its value, so the uploader knows what is allowed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_weights_bytes: int = Field(DEFAULT_MAX_BYTES, gt=0)
    """Largest ``adapter.safetensors``."""
    max_manifest_bytes: int = Field(MAX_MANIFEST_BYTES, gt=0)
    """Largest ``manifest.json``."""
    max_header_bytes: int = Field(1024 * 1024, gt=0)
    """Largest safetensors JSON header (a ViT-L adapter's is a few tens of kB)."""
    max_width_factor: int = Field(4, gt=0)
    """A bottleneck width (``rank``) may be at most this many times the backbone's embed_dim."""
    max_experts: int = Field(256, gt=0)
    """Largest ``num_experts`` (mixtures of adapters)."""
    max_slots_per_expert: int = Field(64, gt=0)
    """Largest ``slots_per_expert`` (Soft-MoA)."""
    max_prompt_tokens: int = Field(1024, gt=0)
    """Most prompt tokens an adapter may insert."""
    max_labels: int = Field(20_000, gt=0)
    """Most classes (labels) a head may have."""
    max_params: int = Field(2**27, gt=0)
    """Most parameters (sites + head); 2**27 float32 values fill the default 512 MiB file limit."""
    max_depth: int = Field(128, gt=0)
    """Deepest backbone a manifest may describe (used when no backbone is given)."""
    max_embed_dim: int = Field(16_384, gt=0)
    """Widest backbone a manifest may describe (used when no backbone is given)."""

    # -- features: what one request's forward and featurisation cost -------------------------
    max_window_tokens: int = Field(8192, gt=0)
    """Most patch tokens one window may give on the backbone (an audio-visual window: every
    segment's audio and frame tokens). A service passes its per-forward budget
    (``max_batch_tokens``), so every window the server accepts fits one forward. AST's
    overlapping 128 x 1024 window is 12 x 101 = 1212 tokens."""
    min_sample_rate: int = Field(8_000, gt=0)
    """Lowest ``features.sample_rate`` (Hz): telephone audio; below it a 25 ms fbank window
    holds too few samples to be a spectrogram."""
    max_sample_rate: int = Field(48_000, gt=0)
    """Highest ``features.sample_rate`` (Hz): studio audio; resampling cost grows with it."""
    max_mel_bins: int = Field(512, gt=0)
    """Most ``features.num_mel_bins`` (AST: 128); also at most one per FFT bin of the rate."""
    max_target_frames: int = Field(4096, gt=0)
    """Most ``features.target_frames`` (10 ms each; AudioSet's 1024 is 10.24 s)."""
    max_window_overlap: int = Field(16, gt=0)
    """Most windows that may cover one frame: ``features.window_hop_frames`` must be at least
    ``ceil(target_frames / max_window_overlap)``, so a clip's window count (and work) is at most
    this many times the count without overlap."""
    max_clip_seconds: float = Field(86_400.0, gt=0, allow_inf_nan=False)
    """Largest ``features.max_seconds`` (one day); a server caps clips by its own limit anyway."""
    max_feature_stat: float = Field(1000.0, gt=0, allow_inf_nan=False)
    """``|features.mean|`` and ``features.std`` at most this, ``std`` at least its inverse:
    log-mel values are within about +-20, and a tiny ``std`` turns float32 features into Inf."""
    # -- strings and small collections --------------------------------------------------------
    max_label_chars: int = Field(256, gt=0)
    """Longest label and metric name (each is sent in every answer or listing)."""
    max_task_chars: int = Field(1024, gt=0)
    """Longest ``task`` description."""
    max_metrics: int = Field(64, gt=0)
    """Most entries in ``metrics``."""

    @model_validator(mode="after")
    def _ranges(self) -> CheckpointLimits:
        if self.min_sample_rate > self.max_sample_rate:
            raise ValueError(
                f"min_sample_rate {self.min_sample_rate} is over max_sample_rate "
                f"{self.max_sample_rate}"
            )
        return self


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
