"""Checkpoint validation that allocates nothing an upload controls (docs/design.md §4).

One path serves files on disk and uploads in memory, cheapest and safest step first: the
backbone (fingerprint, and the recorded config equal to the server's), manifest limits (bottleneck
widths, experts, prompt tokens, labels and their length, and the work one request costs: sample
rate, mel bins, frames, tokens per window, window hop, clip length), the weights' size, expected
shapes from the ``meta`` device and arithmetic (never real tensors), parameters against the
limit and the file size, the sha256, the safetensors header (its length bounded before it is
parsed; names, shapes, dtypes, offsets), and only then the tensor data, which must be finite.
:func:`tensor_problems` is shared with the bank, so both refuse the same things in the same words.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import Tensor

from lookaside.adapters import get_method
from lookaside.adapters.base import AdapterConfig
from lookaside.adapters.head import HeadConfig
from lookaside.adapters.stack import AdapterStack
from lookaside.backbone import VisionTransformer
from lookaside.backbone_config import BackboneConfig, window_tokens
from lookaside.checkpoint.compat import require_backbone
from lookaside.checkpoint.manifest import AdapterManifest, CheckpointLimits, describe
from lookaside.errors import ConfigError, InvalidCheckpoint
from lookaside.features import FRAME_LENGTH_MS
from lookaside.tasks import AV_EVENTS

__all__ = [
    "FLOAT_DTYPES",
    "HEAD_PREFIX",
    "HeaderEntry",
    "adapter_shapes",
    "check_backbone",
    "check_finite",
    "check_header",
    "check_features",
    "check_manifest_limits",
    "nonfinite_names",
    "expected_shapes",
    "parse_header",
    "read_tensors",
    "tensor_problems",
    "validate_weights",
    "weights_sha256",
]

HEAD_PREFIX = "head."
"""Checkpoint key prefix of the classification head's tensors (as the bank writes them)."""
FLOAT_DTYPES: dict[str, torch.dtype] = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
"""safetensors header dtypes accepted for adapter tensors (every adapter tensor is a weight)."""
MIN_ITEMSIZE = min(torch.empty(0, dtype=d).element_size() for d in FLOAT_DTYPES.values())
"""Fewest bytes per parameter a valid file can use (F16/BF16): the file size bounds the count."""
_ITEMSIZE = {
    **dict.fromkeys(("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3"), 1),
    **dict.fromkeys(("I16", "U16", "F16", "BF16"), 2),
    **dict.fromkeys(("I32", "U32", "F32"), 4),
    **dict.fromkeys(("I64", "U64", "F64"), 8),
}
"""Bytes per element of every safetensors dtype (to check each tensor's byte span)."""
_WIDTH_FIELDS = ("rank",)
"""Config fields that are bottleneck widths (bounded by ``max_width_factor * embed_dim``)."""


def tensor_problems(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[tuple[int, ...], str, bool]],
) -> list[str]:
    """Every difference between the tensors an adapter needs and those offered, as messages.

    Shared by the bank (tensors in memory) and the checkpoint loader (a safetensors header, before
    any data is read), so both refuse the same things with the same words.

    Args:
        expected: name -> shape.
        found: name -> (shape, dtype name, is floating point).
    """
    problems: list[str] = []
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing}")
    if extra:
        problems.append(f"unexpected tensors {extra}")
    for name in sorted(set(expected) & set(found)):
        shape, dtype, floating = found[name]
        if tuple(shape) != tuple(expected[name]):
            problems.append(f"{name} has shape {list(shape)}, expected {list(expected[name])}")
        if not floating:
            problems.append(f"{name} has dtype {dtype}, expected a floating-point type")
    return problems


# -- shapes without allocation ---------------------------------------------------------------


def expected_shapes(
    backbone_cfg: BackboneConfig,
    method: str,
    config: AdapterConfig | Mapping[str, object],
    head: HeadConfig,
) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes one adapter of ``method``/``config``/``head`` consists of.

    The sites are built on the ``meta`` device (:meth:`AdapterStack.shapes_of`: shapes only, no
    storage), the head by arithmetic (:meth:`HeadConfig.shapes`), the same computation the bank
    uses, so nothing here is sized by the config's numbers in memory. Call
    :func:`check_manifest_limits` first for input from outside: a meta build still costs Python
    objects per block and site.

    Raises:
        ConfigError: the config does not fit this method or backbone.
    """
    spec = get_method(method)
    cfg = spec.parse_config(config)
    shapes: dict[str, tuple[int, ...]] = {}
    if not spec.head_only:
        shapes.update(_site_shapes(spec.name, cfg, backbone_cfg))
    shapes.update({HEAD_PREFIX + k: s for k, s in head.shapes(backbone_cfg.embed_dim).items()})
    return shapes


_SITE_SHAPES: dict[tuple[str, str, str], dict[str, tuple[int, ...]]] = {}
_SITE_SHAPES_MAX = 256


def _site_shapes(
    method: str, cfg: AdapterConfig, backbone_cfg: BackboneConfig
) -> dict[str, tuple[int, ...]]:
    """:meth:`AdapterStack.shapes_of`, memoised by (method, config, backbone): a meta build of a
    ViT-B stack costs ~10 ms of Python per upload, the same for every upload of one config."""
    key = (method, cfg.model_dump_json(), backbone_cfg.model_dump_json())
    shapes = _SITE_SHAPES.get(key)
    if shapes is None:
        shapes = AdapterStack.shapes_of(get_method(method), cfg, backbone_cfg)  # meta device
        if len(_SITE_SHAPES) >= _SITE_SHAPES_MAX:
            _SITE_SHAPES.clear()
        _SITE_SHAPES[key] = shapes
    return dict(shapes)


def check_manifest_limits(
    manifest: AdapterManifest, backbone_cfg: BackboneConfig, limits: CheckpointLimits
) -> None:
    """Refuse a manifest that describes something larger than ``limits`` allow (all at once)."""
    problems: list[str] = []
    if backbone_cfg.depth > limits.max_depth:
        problems.append(f"backbone depth {backbone_cfg.depth} is over max_depth={limits.max_depth}")
    if backbone_cfg.embed_dim > limits.max_embed_dim:
        problems.append(
            f"backbone embed_dim {backbone_cfg.embed_dim} is over "
            f"max_embed_dim={limits.max_embed_dim}"
        )
    if len(manifest.labels) > limits.max_labels:
        problems.append(f"{len(manifest.labels)} labels, over max_labels={limits.max_labels}")
    try:
        cfg = manifest.adapter_config()
    except (ValidationError, ValueError) as exc:
        raise InvalidCheckpoint(
            f"checkpoint {manifest.id}: invalid config for method {manifest.method!r}: "
            f"{describe(exc)}"
        ) from None
    fields = cfg.model_dump()
    max_width = limits.max_width_factor * backbone_cfg.embed_dim
    for name in _WIDTH_FIELDS:
        value = fields.get(name)
        if isinstance(value, int) and value > max_width:
            problems.append(
                f"config.{name}={value} is over {max_width} (max_width_factor="
                f"{limits.max_width_factor} x embed_dim {backbone_cfg.embed_dim})"
            )
    for name, limit, limit_name in (
        ("num_experts", limits.max_experts, "max_experts"),
        ("slots_per_expert", limits.max_slots_per_expert, "max_slots_per_expert"),
    ):
        value = fields.get(name)
        if isinstance(value, int) and value > limit:
            problems.append(f"config.{name}={value} is over {limit_name}={limit}")
    prompts = cfg.num_prompts()
    if prompts > limits.max_prompt_tokens:
        problems.append(
            f"{prompts} prompt tokens, over max_prompt_tokens={limits.max_prompt_tokens}"
        )
    segments = int(getattr(cfg, "segments", 1)) if AV_EVENTS.serves(manifest.method) else 0
    problems += check_features(manifest, backbone_cfg, limits, segments=segments)
    problems += _text_problems(manifest, limits)
    if problems:
        raise InvalidCheckpoint(
            f"checkpoint {manifest.id} ({manifest.method}) is larger than this server accepts: "
            + "; ".join(problems)
            + ". Retrain or re-export the adapter within these limits"
        )


def fft_bins(sample_rate: int) -> int:
    """FFT bins of the Kaldi fbank at ``sample_rate``: its 25 ms window padded to a power of two,
    halved (16 kHz: 400 samples -> 512 -> 256 bins)."""
    window = max(int(sample_rate * FRAME_LENGTH_MS / 1000), 1)
    return (1 << (window - 1).bit_length()) // 2


def check_features(
    manifest: AdapterManifest,
    backbone_cfg: BackboneConfig,
    limits: CheckpointLimits,
    *,
    segments: int = 0,
) -> list[str]:
    """Problems of ``manifest.features`` against ``limits`` and the backbone, as messages.

    Each names the field, its value and the limit. The work of one request grows with the sample
    rate (resampling, fbank), the mel bins and frames (features, tokens), the tokens of one window
    (the forward; ``segments`` > 0: an audio-visual window of that many one-second segments, each
    a spectrogram and a frame), the window overlap (windows per clip) and the clip length.
    Arithmetic only: nothing is sized by these values here.
    """
    problems = _grid_problems(manifest, backbone_cfg, limits, segments)
    f = manifest.features
    min_hop = -(-f.target_frames // limits.max_window_overlap)
    if f.window_hop_frames is not None and f.window_hop_frames < min_hop:
        problems.append(
            f"features.window_hop_frames={f.window_hop_frames} is under {min_hop} "
            f"(ceil(target_frames {f.target_frames} / max_window_overlap="
            f"{limits.max_window_overlap}))"
        )
    if f.max_seconds > limits.max_clip_seconds:
        problems.append(
            f"features.max_seconds={f.max_seconds:g} is over "
            f"max_clip_seconds={limits.max_clip_seconds:g}"
        )
    stat = limits.max_feature_stat
    if abs(f.mean) > stat:
        problems.append(f"features.mean={f.mean:g} is outside +-{stat:g} (max_feature_stat)")
    if not 1 / stat <= f.std <= stat:
        problems.append(
            f"features.std={f.std:g} is outside {1 / stat:g}..{stat:g} (max_feature_stat)"
        )
    return problems


def _grid_problems(
    manifest: AdapterManifest, backbone_cfg: BackboneConfig, limits: CheckpointLimits, segments: int
) -> list[str]:
    """Sample rate, mel bins, frames and the tokens of one window (see :func:`check_features`)."""
    f = manifest.features
    problems: list[str] = []
    lo, hi = limits.min_sample_rate, limits.max_sample_rate
    if not lo <= f.sample_rate <= hi:
        problems.append(
            f"features.sample_rate={f.sample_rate} Hz is outside {lo}..{hi} Hz "
            "(min_sample_rate..max_sample_rate); AST uses 16000"
        )
    patch = backbone_cfg.patch_size
    mel_cap = min(limits.max_mel_bins, fft_bins(f.sample_rate))
    if f.num_mel_bins < patch:
        problems.append(
            f"features.num_mel_bins={f.num_mel_bins} is under the backbone's patch size {patch}"
        )
    elif f.num_mel_bins > limits.max_mel_bins:
        problems.append(
            f"features.num_mel_bins={f.num_mel_bins} is over max_mel_bins={limits.max_mel_bins}"
        )
    elif f.num_mel_bins > mel_cap:
        problems.append(
            f"features.num_mel_bins={f.num_mel_bins} is over {mel_cap}, the FFT bins of a "
            f"{FRAME_LENGTH_MS:g} ms window at features.sample_rate={f.sample_rate} Hz (one mel "
            "bin per FFT bin at most)"
        )
    if f.target_frames < patch:
        problems.append(
            f"features.target_frames={f.target_frames} is under the backbone's patch size {patch}"
        )
    elif f.target_frames > limits.max_target_frames:
        problems.append(
            f"features.target_frames={f.target_frames} is over "
            f"max_target_frames={limits.max_target_frames}"
        )
    grid_ok = patch <= f.num_mel_bins <= limits.max_mel_bins
    if grid_ok and patch <= f.target_frames <= limits.max_target_frames:
        tokens = window_tokens(backbone_cfg, f.num_mel_bins, f.target_frames, segments=segments)
        if tokens > limits.max_window_tokens:
            what = f"{segments} segments of " if segments else ""
            problems.append(
                f"one window of {what}features.num_mel_bins={f.num_mel_bins} x "
                f"features.target_frames={f.target_frames} is {tokens} tokens on backbone "
                f"{backbone_cfg.name!r}, over max_window_tokens={limits.max_window_tokens} "
                "(the server's per-forward budget, LOOKASIDE_MAX_BATCH_TOKENS)"
            )
    return problems


def _text_problems(manifest: AdapterManifest, limits: CheckpointLimits) -> list[str]:
    """Labels, metric names and the task description within their length limits."""
    problems: list[str] = []
    cap = limits.max_label_chars
    long_labels = [i for i, label in enumerate(manifest.labels) if len(label) > cap]
    if long_labels:
        longest = max(len(manifest.labels[i]) for i in long_labels)
        problems.append(
            f"labels at positions {long_labels[:5]}{' ...' if len(long_labels) > 5 else ''} are "
            f"longer than max_label_chars={cap} (longest: {longest} characters)"
        )
    if len(manifest.task) > limits.max_task_chars:
        problems.append(
            f"task is {len(manifest.task)} characters, over max_task_chars={limits.max_task_chars}"
        )
    if len(manifest.metrics) > limits.max_metrics:
        problems.append(f"{len(manifest.metrics)} metrics, over max_metrics={limits.max_metrics}")
    long_names = sum(1 for name in manifest.metrics if len(name) > cap)
    if long_names:
        problems.append(f"{long_names} metric names are longer than max_label_chars={cap}")
    return problems


def adapter_shapes(
    manifest: AdapterManifest, backbone_cfg: BackboneConfig, limits: CheckpointLimits
) -> dict[str, tuple[int, ...]]:
    """:func:`expected_shapes` of a manifest after :func:`check_manifest_limits`; the parameter
    count is checked against ``limits.max_params`` (file size: :func:`validate_weights`)."""
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
    params = num_params(shapes)
    if params > limits.max_params:
        raise InvalidCheckpoint(
            f"checkpoint {manifest.id} ({manifest.method}) describes {params} parameters, over "
            f"max_params={limits.max_params}: use a smaller rank/width, fewer blocks or classes"
        )
    return shapes


def num_params(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Total elements of ``shapes`` (Python ints: no overflow)."""
    return sum(math.prod(shape) for shape in shapes.values())


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


# -- safetensors header ----------------------------------------------------------------------


@dataclass(frozen=True)
class HeaderEntry:
    """One tensor as a safetensors header describes it (offsets relative to the data)."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def parse_header(
    data: bytes | memoryview, *, where: str, max_header_bytes: int
) -> tuple[dict[str, HeaderEntry], int]:
    """The tensors a safetensors buffer declares, and where its data starts; reads no data.

    The 8-byte header length is bounded (by ``max_header_bytes`` and the buffer) before the JSON
    is parsed, so a pickle or random bytes posing as safetensors are refused cheaply.

    Raises:
        InvalidCheckpoint: ``... is not a valid safetensors file: <why>``.
    """

    def bad(why: str) -> InvalidCheckpoint:
        return InvalidCheckpoint(f"{where} is not a valid safetensors file: {why}")

    if len(data) < 8:
        raise bad(f"{len(data)} bytes is shorter than the 8-byte header length")
    size = int.from_bytes(bytes(data[:8]), "little")
    if size > max_header_bytes:
        raise bad(f"its header claims {size} bytes, over max_header_bytes={max_header_bytes}")
    if 8 + size > len(data):
        raise bad(f"its header claims {size} bytes, past the end of the {len(data)}-byte file")
    try:
        raw = json.loads(bytes(data[8 : 8 + size]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise bad(f"its header is not UTF-8 JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise bad("its header is not a JSON object")
    entries: dict[str, HeaderEntry] = {}
    for name, info in raw.items():
        if name == "__metadata__":
            continue
        entry = _entry(info)
        if entry is None:
            raise bad(f"tensor {name!r} has no valid dtype/shape/data_offsets")
        need = math.prod(entry.shape) * _ITEMSIZE[entry.dtype]
        if entry.end - entry.begin != need:
            raise bad(
                f"tensor {name!r} spans {entry.end - entry.begin} bytes, but "
                f"{entry.dtype}{list(entry.shape)} needs {need}"
            )
        entries[name] = entry
    _check_layout(entries, len(data) - 8 - size, bad)
    return entries, 8 + size


def _check_layout(
    entries: Mapping[str, HeaderEntry], data_len: int, bad: Callable[[str], InvalidCheckpoint]
) -> None:
    """Tensors must tile the data bytes exactly, in order, as safetensors writes them."""
    position = 0
    for name, entry in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if entry.begin != position or entry.end > data_len:
            raise bad(
                f"tensor {name!r} at bytes [{entry.begin}, {entry.end}) does not follow the "
                f"previous tensor (ends at {position}) within the {data_len} data bytes"
            )
        position = entry.end
    if position != data_len:
        raise bad(f"{data_len - position} bytes after the last tensor")


def _entry(info: object) -> HeaderEntry | None:
    if not isinstance(info, dict):
        return None
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _ITEMSIZE or not isinstance(shape, list) or not isinstance(offsets, list):
        return None
    ints = [*shape, *offsets]
    if len(offsets) != 2 or not all(isinstance(v, int) and v >= 0 for v in ints):
        return None
    begin, end = offsets
    if end < begin:
        return None
    return HeaderEntry(dtype, tuple(shape), begin, end)


def check_header(
    manifest: AdapterManifest,
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[tuple[int, ...], str]],
) -> None:
    """Compare tensors (name -> (shape, dtype name)) with the expected ones; one message."""
    problems = tensor_problems(
        expected, {n: (shape, dtype, dtype in FLOAT_DTYPES) for n, (shape, dtype) in found.items()}
    )
    if problems:
        raise InvalidCheckpoint(
            f"checkpoint {manifest.id} ({manifest.method}) does not fit its manifest: "
            + "; ".join(problems)
        )


def read_tensors(data: bytes | memoryview, entries: Mapping[str, HeaderEntry]) -> dict[str, Tensor]:
    """Deserialise a buffer whose header already passed :func:`parse_header` and
    :func:`check_header` (so every allocation is bounded by the expected shapes).

    The data itself is read by the safetensors library, never by hand; ``entries`` only checks
    that the library saw the tensors the header check approved.
    """
    try:
        tensors = load_safetensors(bytes(data))
    except SafetensorError as exc:
        raise InvalidCheckpoint(f"the weights are not a valid safetensors file: {exc}") from None
    if sorted(tensors) != sorted(entries):  # the library parsed another header than ours
        raise InvalidCheckpoint("safetensors header changed between validation and reading")
    return tensors


def nonfinite_names(tensors: Mapping[str, Tensor]) -> list[str]:
    """Names of the floating tensors holding NaN or Inf, sorted.

    One sum per tensor first: a NaN or Inf anywhere makes a sum non-finite, so finite sums prove
    every value finite (6x faster than ``isfinite`` over every element on a 2M-parameter adapter:
    no bool tensor per weight). Only a tensor whose sum is not finite (NaN/Inf, or an overflow of
    large finite values) is checked element by element. Sums are compared in float64 per device.
    """
    by_device: dict[torch.device, list[str]] = {}
    for name, t in tensors.items():
        if t.is_floating_point():
            by_device.setdefault(t.device, []).append(name)
    suspects: list[str] = []
    for names in by_device.values():
        sums = torch.stack([tensors[n].detach().sum().to(torch.float64) for n in names])
        ok = torch.isfinite(sums).tolist()
        suspects += [n for n, good in zip(names, ok, strict=True) if not good]
    return sorted(n for n in suspects if not bool(torch.isfinite(tensors[n]).all()))


def check_finite(manifest: AdapterManifest, tensors: Mapping[str, Tensor]) -> None:
    """Refuse NaN or Inf in any tensor (they would poison every row routed to the adapter)."""
    bad = nonfinite_names(tensors)
    if bad:
        raise InvalidCheckpoint(f"checkpoint {manifest.id}: tensors {bad} contain NaN or Inf")


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
    params = num_params(expected)
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
