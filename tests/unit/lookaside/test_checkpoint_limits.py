"""Checkpoint limits: nothing a manifest describes is allocated before it is checked (NOTES §5).

A 1 KB manifest can describe a huge adapter (``rank: 50000``, ``rank: 1e12``, 120k labels); the
loader must refuse it with a message naming the limit, without building it. Memory is measured
as the peak RSS growth during the call (a sampling thread), against a ceiling; the instrument
itself is shown to see a real allocation.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from pydantic import ValidationError

from lookaside.adapters import HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.checkpoint import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AdapterCheckpoint,
    CheckpointLimits,
    load_checkpoint,
    validate_checkpoint_bytes,
)
from lookaside.errors import InvalidCheckpoint
from lookaside.features import FeatureConfig

MiB = 1024 * 1024
CEILING = 50 * MiB
"""Most RSS growth a refused manifest may cause (the old loader took ~590 MiB for rank 50000)."""
PERMISSIVE = CheckpointLimits(
    max_width_factor=10**12,
    max_experts=10**9,
    max_slots_per_expert=10**9,
    max_prompt_tokens=10**9,
    max_labels=10**9,
    max_params=2**62,
)
"""Limits that admit anything: only the file-size check stands between a manifest and memory."""


@contextmanager
def peak_rss_growth() -> Iterator[list[int]]:
    """Yields a one-item list that holds, on exit, the peak RSS growth in bytes during the block."""
    process = psutil.Process()
    base = process.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            stop.wait(0.0002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    result = [0]
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result[0] = max(peak[0], process.memory_info().rss) - base


@pytest.fixture(scope="module")
def upload(tiny_backbone: VisionTransformer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid LoAA checkpoint of the tiny backbone (attn + ffn sites, 3 labels)."""
    bank = AdapterBank.for_backbone(tiny_backbone)
    bank.add("a@1", "loaa", {"rank": 5, "kernels": "attn:T,ffn:F"}, HeadConfig(num_classes=3))
    ckpt = AdapterCheckpoint.from_bank(
        bank,
        "a@1",
        name="a",
        version=1,
        task="t",
        task_type="multiclass",
        labels=["x", "y", "z"],
        features=FeatureConfig(),
        backbone=tiny_backbone,
    )
    target = tmp_path_factory.mktemp("limits") / "a"
    ckpt.save(target)
    return target


def manifest_of(directory: Path) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((directory / MANIFEST_FILE).read_text())
    return raw


def refuse(
    directory: Path,
    raw: dict[str, Any],
    backbone: VisionTransformer | None,
    limits: CheckpointLimits | None = None,
) -> str:
    """The message validate_checkpoint_bytes refuses the edited manifest with."""
    data = json.dumps(raw, separators=(",", ":")).encode()
    weights = (directory / WEIGHTS_FILE).read_bytes()
    with pytest.raises(InvalidCheckpoint) as info:
        validate_checkpoint_bytes(data, weights, backbone=backbone, limits=limits)
    return str(info.value)


def test_the_instrument_sees_a_real_allocation() -> None:
    with peak_rss_growth() as grown:
        block = torch.ones(50 * MiB // 4 * 4)  # 200 MiB, written
        del block
    assert grown[0] > 150 * MiB


# -- the extreme manifests of issue 7 --------------------------------------------------------


def _labels(n: int) -> list[str]:
    """``n`` short unique labels (base 36), so 120k of them fit the 1 MiB manifest limit."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    for i in range(n):
        s = ""
        while True:
            i, r = divmod(i, 36)
            s = digits[r] + s
            if i == 0:
                break
        out.append(s)
    return out


EXTREME: dict[str, tuple[str, object, str]] = {
    "rank 50000": (
        "rank",
        50000,
        "config.rank=50000 is over 256 (max_width_factor=4 x embed_dim 64)",
    ),
    "rank 1e12": ("rank", 1e12, "config.rank=1000000000000 is over 256"),
    "120k labels": ("labels", 120_000, "120000 labels, over max_labels=20000"),
}


def _extreme(raw: dict[str, Any], field: str, value: object) -> None:
    if field == "labels":
        assert isinstance(value, int)
        raw["labels"] = _labels(value)
    else:
        raw["config"][field] = value


@pytest.mark.parametrize("case", list(EXTREME))
def test_extreme_manifest_is_refused_by_its_limit_without_allocating(
    case: str, upload: Path, tiny_backbone: VisionTransformer
) -> None:
    field, value, message = EXTREME[case]
    raw = manifest_of(upload)
    _extreme(raw, field, value)
    assert len(json.dumps(raw, separators=(",", ":"))) < 1024 * 1024  # a legal manifest size
    with peak_rss_growth() as grown:
        text = refuse(upload, raw, tiny_backbone)
    assert message in text
    assert grown[0] < CEILING, f"{grown[0] / MiB:.1f} MiB"


@pytest.mark.parametrize("case", list(EXTREME))
def test_extreme_manifest_under_permissive_limits_is_refused_by_the_file_size(
    case: str, upload: Path, tiny_backbone: VisionTransformer
) -> None:
    """With every limit lifted, shapes still come from the meta device and arithmetic: the
    parameters the manifest describes do not fit the file, and nothing was built."""
    field, value, _ = EXTREME[case]
    raw = manifest_of(upload)
    _extreme(raw, field, value)
    with peak_rss_growth() as grown:
        text = refuse(upload, raw, tiny_backbone, PERMISSIVE)
    assert "the manifest does not describe these weights" in text
    assert grown[0] < CEILING, f"{grown[0] / MiB:.1f} MiB"


def test_extreme_manifest_on_disk_is_refused_the_same_way(
    upload: Path, tiny_backbone: VisionTransformer, tmp_path: Path
) -> None:
    raw = manifest_of(upload)
    raw["config"]["rank"] = 50000
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(raw))
    (tmp_path / WEIGHTS_FILE).write_bytes((upload / WEIGHTS_FILE).read_bytes())
    with peak_rss_growth() as grown, pytest.raises(InvalidCheckpoint, match="config.rank=50000"):
        load_checkpoint(tmp_path, backbone=tiny_backbone)
    assert grown[0] < CEILING


# -- one test per limit ----------------------------------------------------------------------


def test_width_limit_is_inclusive(upload: Path, tiny_backbone: VisionTransformer) -> None:
    raw = manifest_of(upload)
    raw["config"]["rank"] = 4 * 64  # allowed by the limit; refused only as not these weights
    text = refuse(upload, raw, tiny_backbone)
    assert "is larger than" not in text
    assert "the manifest does not describe these weights" in text
    raw["config"]["rank"] = 4 * 64 + 1
    assert "config.rank=257 is over 256" in refuse(upload, raw, tiny_backbone)
    assert "config.rank=257" not in refuse(
        upload, raw, tiny_backbone, CheckpointLimits(max_width_factor=5)
    )


@pytest.mark.parametrize(
    ("method", "config", "limits", "message"),
    [
        (
            "soft_moa",
            {"num_experts": 257},
            CheckpointLimits(),
            "config.num_experts=257 is over max_experts=256",
        ),
        (
            "soft_moa",
            {"num_experts": 9},
            CheckpointLimits(max_experts=8),
            "config.num_experts=9 is over max_experts=8",
        ),
        (
            "soft_moa",
            {"slots_per_expert": 65},
            CheckpointLimits(),
            "config.slots_per_expert=65 is over max_slots_per_expert=64",
        ),
        (
            "prompt",
            {"num_tokens": 1025},
            CheckpointLimits(),
            "1025 prompt tokens, over max_prompt_tokens=1024",
        ),
        (
            "prompt",
            {"num_tokens": 11},
            CheckpointLimits(max_prompt_tokens=10),
            "11 prompt tokens, over max_prompt_tokens=10",
        ),
        (
            "lora",
            {"rank": 65},
            CheckpointLimits(max_width_factor=1),
            "config.rank=65 is over 64 (max_width_factor=1 x embed_dim 64)",
        ),
    ],
)
def test_config_limits(
    method: str,
    config: dict[str, object],
    limits: CheckpointLimits,
    message: str,
    upload: Path,
    tiny_backbone: VisionTransformer,
) -> None:
    raw = manifest_of(upload)
    raw["method"], raw["config"] = method, config
    text = refuse(upload, raw, tiny_backbone, limits)
    assert "is larger than this server accepts" in text
    assert message in text


def test_label_limit(upload: Path, tiny_backbone: VisionTransformer) -> None:
    raw = manifest_of(upload)
    assert "3 labels, over max_labels=2" in refuse(
        upload, raw, tiny_backbone, CheckpointLimits(max_labels=2)
    )
    validate_checkpoint_bytes(
        (upload / MANIFEST_FILE).read_bytes(),
        (upload / WEIGHTS_FILE).read_bytes(),
        backbone=tiny_backbone,
        limits=CheckpointLimits(max_labels=3),
    )


def test_param_limit(upload: Path, tiny_backbone: VisionTransformer) -> None:
    params = manifest_of(upload)["trainable_params"]
    text = refuse(upload, manifest_of(upload), tiny_backbone, CheckpointLimits(max_params=100))
    assert f"describes {params} parameters, over max_params=100" in text
    validate_checkpoint_bytes(
        (upload / MANIFEST_FILE).read_bytes(),
        (upload / WEIGHTS_FILE).read_bytes(),
        backbone=tiny_backbone,
        limits=CheckpointLimits(max_params=params),
    )


def test_weights_and_manifest_size_limits(upload: Path, tiny_backbone: VisionTransformer) -> None:
    manifest, weights = (upload / MANIFEST_FILE).read_bytes(), (upload / WEIGHTS_FILE).read_bytes()
    with pytest.raises(InvalidCheckpoint, match=r"over the limit of 100 bytes \(max_weights_"):
        validate_checkpoint_bytes(
            manifest,
            weights,
            backbone=tiny_backbone,
            limits=CheckpointLimits(max_weights_bytes=100),
        )
    with pytest.raises(InvalidCheckpoint, match=r"over the limit of 100 bytes \(a manifest's"):
        validate_checkpoint_bytes(
            manifest,
            weights,
            backbone=tiny_backbone,
            limits=CheckpointLimits(max_manifest_bytes=100),
        )
    with pytest.raises(InvalidCheckpoint, match=r"over the limit of 100 bytes \(a manifest's"):
        load_checkpoint(upload, limits=CheckpointLimits(max_manifest_bytes=100))
    with pytest.raises(InvalidCheckpoint, match=r"over the limit of 100 bytes \(max_weights_"):
        load_checkpoint(upload, limits=CheckpointLimits(max_weights_bytes=100))


def test_header_size_limit(upload: Path, tiny_backbone: VisionTransformer) -> None:
    manifest, weights = (upload / MANIFEST_FILE).read_bytes(), (upload / WEIGHTS_FILE).read_bytes()
    size = int.from_bytes(weights[:8], "little")
    limits = CheckpointLimits(max_header_bytes=size - 1)
    with pytest.raises(InvalidCheckpoint) as info:
        validate_checkpoint_bytes(manifest, weights, backbone=tiny_backbone, limits=limits)
    assert f"its header claims {size} bytes, over max_header_bytes={size - 1}" in str(info.value)
    validate_checkpoint_bytes(
        manifest, weights, backbone=tiny_backbone, limits=CheckpointLimits(max_header_bytes=size)
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("depth", 100_000, "backbone depth 100000 is over max_depth=128"),
        ("embed_dim", 1 << 20, "backbone embed_dim 1048576 is over max_embed_dim=16384"),
    ],
)
def test_backbone_described_by_the_manifest_is_bounded(
    key: str, value: int, message: str, upload: Path
) -> None:
    """Without a backbone the manifest's recorded config sizes the shapes: it is bounded too."""
    raw = manifest_of(upload)
    raw["backbone"]["config"][key] = value
    if key == "embed_dim":
        raw["backbone"]["config"]["num_heads"] = 1
    with peak_rss_growth() as grown:
        text = refuse(upload, raw, None)
    assert message in text
    assert grown[0] < CEILING


def test_limits_are_validated() -> None:
    with pytest.raises(ValidationError):
        CheckpointLimits(max_labels=0)
    with pytest.raises(ValidationError):
        CheckpointLimits(max_lables=5)  # type: ignore[call-arg]
    assert CheckpointLimits().max_labels == 20_000


# -- features and backbone config: what one request costs (issue 14) -------------------------


def _features(raw: dict[str, Any], **changes: object) -> dict[str, Any]:
    raw["features"].update(changes)
    return raw


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_mel_bins": 10**6}, "features.num_mel_bins=1000000 is over max_mel_bins=512"),
        (
            {"target_frames": 10**9},
            "features.target_frames=1000000000 is over max_target_frames=4096",
        ),
        ({"sample_rate": 1}, "features.sample_rate=1 Hz is outside 8000..48000 Hz"),
        ({"max_seconds": 1e12}, "features.max_seconds=1e+12 is over max_clip_seconds=86400"),
        (
            {"target_frames": 1024, "window_hop_frames": 1},
            "features.window_hop_frames=1 is under 64 (ceil(target_frames 1024 / "
            "max_window_overlap=16))",
        ),
        ({"num_mel_bins": 8}, "features.num_mel_bins=8 is under the backbone's patch size 16"),
        ({"target_frames": 15}, "features.target_frames=15 is under the backbone's patch size 16"),
        (
            {"num_mel_bins": 257},
            "features.num_mel_bins=257 is over 256, the FFT bins of a 25 ms window at "
            "features.sample_rate=16000 Hz",
        ),
        (
            {"sample_rate": 8000, "num_mel_bins": 129},
            "features.num_mel_bins=129 is over 128, the FFT bins",
        ),
        ({"mean": 1e300}, "features.mean=1e+300 is outside +-1000 (max_feature_stat)"),
        ({"std": 1e-30}, "features.std=1e-30 is outside 0.001..1000 (max_feature_stat)"),
    ],
)
def test_feature_limits(
    changes: dict[str, object], message: str, upload: Path, tiny_backbone: VisionTransformer
) -> None:
    raw = _features(manifest_of(upload), **changes)
    with peak_rss_growth() as grown:
        text = refuse(upload, raw, tiny_backbone)
    assert "is larger than this server accepts" in text
    assert message in text
    assert grown[0] < CEILING


def test_every_feature_problem_is_reported_at_once(
    upload: Path, tiny_backbone: VisionTransformer
) -> None:
    raw = _features(manifest_of(upload), num_mel_bins=10**6, sample_rate=1, max_seconds=1e12)
    text = refuse(upload, raw, tiny_backbone)
    for field in ("num_mel_bins", "sample_rate", "max_seconds"):
        assert f"features.{field}=" in text


def test_non_finite_feature_statistics_are_refused(upload: Path) -> None:
    text = (upload / MANIFEST_FILE).read_text()
    raw = json.loads(text)
    raw["features"]["mean"] = float("nan")
    data = json.dumps(raw).encode()  # Python writes NaN, which json.loads reads back
    with pytest.raises(InvalidCheckpoint, match=r"features\.mean: Input should be a finite"):
        validate_checkpoint_bytes(data, (upload / WEIGHTS_FILE).read_bytes(), backbone=None)


def test_window_token_limit_is_the_backbone_patch_arithmetic(
    upload: Path, tiny_backbone: VisionTransformer
) -> None:
    """128 mel x 1024 frames on the tiny ViT/16 is 8 x 64 = 512 tokens: 512 passes, 511 not."""
    raw = _features(manifest_of(upload), target_frames=1024)
    text = refuse(upload, raw, tiny_backbone, CheckpointLimits(max_window_tokens=511))
    assert (
        "one window of features.num_mel_bins=128 x features.target_frames=1024 is 512 tokens on "
        "backbone 'test_vit', over max_window_tokens=511"
    ) in text
    validate_checkpoint_bytes(
        json.dumps(raw).encode(),
        (upload / WEIGHTS_FILE).read_bytes(),
        backbone=tiny_backbone,
        limits=CheckpointLimits(max_window_tokens=512),
    )


def test_ast_overlapping_window_and_the_papers_feature_configs_pass() -> None:
    """AST's stride-10 128 x 1024 window is 12 x 101 = 1212 tokens; ESC-50, Speech Commands,
    AudioSet and AV-PEA's settings all pass the default limits on ViT-B and AST."""
    from lookaside.backbone_config import window_tokens
    from lookaside.backbones import PRESETS
    from lookaside.checkpoint.limits import check_features

    ast = PRESETS["ast_base_stride10"]
    assert window_tokens(ast, 128, 1024) == 12 * 101
    vit_rgb = PRESETS["vit_base_patch16_224"]
    assert window_tokens(vit_rgb, 128, 100, segments=10) == 10 * (8 * 6 + 14 * 14)
    limits = CheckpointLimits()
    for backbone_cfg in (ast, PRESETS["vit_base_patch16"], vit_rgb):
        for features in (
            FeatureConfig(target_frames=1024),
            FeatureConfig(target_frames=512, window_hop_frames=256),
            FeatureConfig(target_frames=128),
            FeatureConfig(target_frames=100, num_mel_bins=64),
        ):
            manifest = _manifest_with(features)
            assert check_features(manifest, backbone_cfg, limits) == []
    ave = FeatureConfig(target_frames=100)
    avpea = _manifest_with(ave, method="avpea", config={"segments": 10})
    assert check_features(avpea, vit_rgb, limits) == []  # AVE: 10 segments
    avpea = _manifest_with(ave, method="avpea", config={"segments": 40})
    (problem,) = check_features(avpea, vit_rgb, limits)
    assert "one window of 40 segments of" in problem
    assert "is 9760 tokens" in problem


def _manifest_with(
    features: FeatureConfig, *, method: str = "linear", config: dict[str, Any] | None = None
) -> Any:
    from lookaside.checkpoint import AdapterManifest

    return AdapterManifest.model_validate(
        {
            "name": "x",
            "version": 1,
            "task": "t",
            "task_type": "multiclass",
            "method": method,
            "config": config or {},
            "labels": ["a"],
            "features": features.model_dump(),
            "backbone": {"source": "random:", "name": "n", "fingerprint": "0" * 16, "config": {}},
            "trainable_params": 0,
            "trainable_percent": 0.0,
            "weights_sha256": "0" * 64,
        }
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda raw: raw["labels"].__setitem__(1, "y" * 10**5),
            "labels at positions [1] are longer than max_label_chars=256 (longest: 100000",
        ),
        (
            lambda raw: raw.__setitem__("task", "t" * 10**5),
            "task is 100000 characters, over max_task_chars=1024",
        ),
        (
            lambda raw: raw.__setitem__("metrics", {f"m{i}": 0.5 for i in range(100)}),
            "100 metrics, over max_metrics=64",
        ),
        (
            lambda raw: raw.__setitem__("metrics", {"m" * 300: 0.5}),
            "1 metric names are longer than max_label_chars=256",
        ),
    ],
)
def test_text_limits(
    edit: Any, message: str, upload: Path, tiny_backbone: VisionTransformer
) -> None:
    raw = manifest_of(upload)
    edit(raw)
    assert message in refuse(upload, raw, tiny_backbone)


def test_recorded_backbone_config_must_equal_the_servers(
    upload: Path, tiny_backbone: VisionTransformer
) -> None:
    """The fingerprint matches but the recorded config lies: refused (422, not 409)."""
    raw = manifest_of(upload)
    raw["backbone"]["config"]["depth"] = 10**6
    text = refuse(upload, raw, tiny_backbone)
    assert "backbone.config.depth=1000000 (this server: 4)" in text
    assert "records backbone fingerprint" in text
    raw = manifest_of(upload)
    raw["backbone"]["config"]["mlp_ratio"] = 1000.0
    assert "backbone.config.mlp_ratio=1000.0 (this server: 4.0)" in refuse(
        upload, raw, tiny_backbone
    )
    raw = manifest_of(upload)
    raw["backbone"]["config"]["name"] = "renamed"  # the display name is not the architecture
    validate_checkpoint_bytes(
        json.dumps(raw).encode(), (upload / WEIGHTS_FILE).read_bytes(), backbone=tiny_backbone
    )


def test_limits_keep_their_store_constructor_and_check_their_ranges() -> None:
    limits = CheckpointLimits(max_weights_bytes=10, max_manifest_bytes=20)
    assert (limits.max_window_tokens, limits.max_mel_bins) == (8192, 512)
    with pytest.raises(ValidationError, match="min_sample_rate 9 is over max_sample_rate 8"):
        CheckpointLimits(min_sample_rate=9, max_sample_rate=8)
