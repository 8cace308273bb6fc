"""How large an adapter may be (:class:`CheckpointLimits`) and the check of a manifest against
it, before anything the manifest describes exists (docs/design.md §4).

The limits bound everything a manifest could make large: the backbone's size, bottleneck widths,
experts, prompt tokens, labels and their length, parameters, file sizes, and the work one
request costs (sample rate, mel bins, frames, the tokens of one window as the adapter's task kind
counts them, window overlap, clip length). :func:`check_manifest_limits` is arithmetic only and
names every field over its limit at once, with its value and the limit.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lookaside.backbone_config import BackboneConfig
from lookaside.checkpoint.manifest import (
    DEFAULT_MAX_BYTES,
    MAX_MANIFEST_BYTES,
    AdapterManifest,
    describe,
)
from lookaside.errors import InvalidCheckpoint
from lookaside.features import FRAME_LENGTH_MS, FeatureConfig
from lookaside.tasks import task_for

__all__ = [
    "CheckpointLimits",
    "check_features",
    "feature_stat_problems",
    "check_manifest_limits",
    "fft_bins",
    "min_window_hop",
]


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


_WIDTH_FIELDS = ("rank",)
"""Config fields that are bottleneck widths (bounded by ``max_width_factor * embed_dim``)."""


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
    problems += check_features(manifest, backbone_cfg, limits)
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


def min_window_hop(target_frames: int, limits: CheckpointLimits) -> int:
    """Least ``features.window_hop_frames`` for a ``target_frames`` window:
    ``ceil(target_frames / max_window_overlap)``, so at most that many windows cover one frame
    (training refuses a smaller ``--window-hop`` with the same number)."""
    return -(-target_frames // limits.max_window_overlap)


def check_features(
    manifest: AdapterManifest, backbone_cfg: BackboneConfig, limits: CheckpointLimits
) -> list[str]:
    """Problems of ``manifest.features`` against ``limits`` and the backbone, as messages.

    Each names the field, its value and the limit. The work of one request grows with the sample
    rate (resampling, fbank), the mel bins and frames (features, tokens), the tokens of one window
    (the forward, as the adapter's task kind counts them: an audio-visual window holds several
    one-second segments, each a spectrogram and a frame), the window overlap (windows per clip)
    and the clip length. Arithmetic only: nothing is sized by these values here.
    """
    problems = _grid_problems(manifest, backbone_cfg, limits)
    f = manifest.features
    min_hop = min_window_hop(f.target_frames, limits)
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
    return problems + feature_stat_problems(f, limits)


def feature_stat_problems(f: FeatureConfig, limits: CheckpointLimits) -> list[str]:
    """Problems of the normalisation ``mean`` / ``std`` against ``max_feature_stat`` (training
    checks measured stats with this before it trains, so the checkpoint is not refused after)."""
    stat = limits.max_feature_stat
    problems = []
    if abs(f.mean) > stat:
        problems.append(f"features.mean={f.mean:g} is outside +-{stat:g} (max_feature_stat)")
    if not 1 / stat <= f.std <= stat:
        problems.append(
            f"features.std={f.std:g} is outside {1 / stat:g}..{stat:g} (max_feature_stat)"
        )
    return problems


def _grid_problems(
    manifest: AdapterManifest, backbone_cfg: BackboneConfig, limits: CheckpointLimits
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
        task, cfg = task_for(manifest.method), manifest.adapter_config()
        tokens = task.window_tokens(backbone_cfg, f, cfg)
        if tokens > limits.max_window_tokens:
            problems.append(
                f"one window of {task.window_label(cfg)}features.num_mel_bins={f.num_mel_bins} x "
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
