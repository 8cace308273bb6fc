"""Adapter checkpoints: round trips per method, every way a checkpoint can be bad, atomic saves."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from lookaside import __version__
from lookaside.adapters import ADAPTERS, HeadConfig, get_method
from lookaside.adapters.head import AdapterHead
from lookaside.adapters.shapes import clear_cache, expected_shapes
from lookaside.adapters.stack import AdapterStack
from lookaside.backbone import VisionTransformer
from lookaside.backbones import build_random
from lookaside.bank import AdapterBank
from lookaside.checkpoint import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AdapterCheckpoint,
    AdapterManifest,
    ManifestWarning,
    load_checkpoint,
    load_manifest,
    validate_checkpoint_bytes,
)
from lookaside.errors import ConfigError, IncompatibleBackbone, InvalidCheckpoint
from lookaside.features import FeatureConfig
from lookaside.model import MultiAdapterModel
from tests.support import randomise

FRAMES = 64
# Audio-visual methods need a two-stream backbone: their round trip is in test_avpea.py.
AUDIO_METHODS = [m for m, spec in ADAPTERS.items() if "clip" in spec.tasks]
LABELS = ["dog", "rain", "siren"]
# Small configs (the defaults are sized for ViT-B); a method missing here uses its defaults.
CONFIGS: dict[str, dict[str, object]] = {
    "bottleneck": {"rank": 4},
    "lora": {"rank": 4, "alpha": 8.0},
    "convpass": {"rank": 3},
    "loaa": {"rank": 5, "kernels": "attn:T,ffn:F"},
    "dense_moa": {"num_experts": 3, "rank": 2},
    "soft_moa": {"num_experts": 3, "rank": 2, "slots_per_expert": 2},
    "aat": {"rank": 4, "layers": [1, 3]},
    "prompt": {"num_tokens": 3, "layers": [0, 2]},
}


def make_checkpoint(
    backbone: VisionTransformer,
    method: str = "loaa",
    *,
    multilabel: bool = False,
    pool: Literal["cls", "mean"] = "cls",
) -> tuple[AdapterBank, AdapterCheckpoint]:
    """A bank with a decoy and ``esc50@2`` (so that one is not in slot 0), and its checkpoint."""
    bank = AdapterBank.for_backbone(backbone, capacity=2)
    head = HeadConfig(num_classes=len(LABELS), pool=pool, multi_label=multilabel)
    cfg = CONFIGS.get(method, {})
    bank.add("decoy@1", method, cfg, head)
    bank.add("esc50@2", method, cfg, head)
    randomise(bank, "decoy@1", seed=11)
    randomise(bank, "esc50@2", seed=12)
    ckpt = AdapterCheckpoint.from_bank(
        bank,
        "esc50@2",
        name="esc50",
        version=2,
        task="environmental sounds",
        task_type="multilabel" if multilabel else "multiclass",
        labels=LABELS,
        features=FeatureConfig(),
        backbone=backbone,
        metrics={"accuracy": 0.5},
    )
    return bank, ckpt


@pytest.fixture
def saved(tiny_backbone: VisionTransformer, tmp_path: Path) -> Path:
    """A valid checkpoint directory for ``esc50@2`` (LoAA)."""
    _, ckpt = make_checkpoint(tiny_backbone)
    target = tmp_path / "esc50" / "2"
    ckpt.save(target)
    return target


# -- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", AUDIO_METHODS)
def test_round_trip_gives_identical_logits(
    method: str, tiny_backbone: VisionTransformer, tmp_path: Path
) -> None:
    bank, ckpt = make_checkpoint(tiny_backbone, method, multilabel=method == "lora", pool="mean")
    target = tmp_path / "store" / "esc50" / "2"
    written = ckpt.save(target)

    assert sorted(p.name for p in target.iterdir()) == sorted([MANIFEST_FILE, WEIGHTS_FILE])
    assert sorted(p.name for p in target.parent.iterdir()) == ["2"]  # no temp dir left
    loaded = load_checkpoint(target, backbone=tiny_backbone)
    assert loaded.manifest == written == ckpt.manifest
    m = loaded.manifest
    assert (m.id, m.method, m.labels, m.pool) == ("esc50@2", method, LABELS, "mean")
    assert m.task_type == ("multilabel" if method == "lora" else "multiclass")
    assert m.head_config() == bank.head("esc50@2").cfg
    assert m.adapter_config() == bank.entries["esc50@2"].config
    assert m.trainable_params == bank.num_adapter_params("esc50@2")
    assert m.trainable_percent == pytest.approx(100 * m.trainable_params / tiny_backbone.num_params)
    assert m.backbone.fingerprint == tiny_backbone.fingerprint()
    assert m.lookaside_version == __version__
    assert m.metrics == {"accuracy": 0.5}
    assert set(loaded.tensors) == set(bank.adapter_tensors("esc50@2"))

    fresh = AdapterBank.for_backbone(tiny_backbone)
    assert loaded.load_into(fresh) == "esc50@2"
    loaded.load_into(fresh, "renamed@7")  # keys carry no adapter id: loads under any id
    spec = torch.randn(3, FRAMES, 128)
    before = MultiAdapterModel(tiny_backbone, bank)(spec, ["esc50@2", "esc50@2", "decoy@1"])
    after = MultiAdapterModel(tiny_backbone, fresh)(spec, ["esc50@2", "renamed@7", "esc50@2"])
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=1e-6)
    decoy = MultiAdapterModel(tiny_backbone, bank)(spec[2:], ["esc50@2"])[0]
    torch.testing.assert_close(after[2], decoy, rtol=0, atol=1e-6)
    assert not torch.allclose(before[2], decoy)  # the decoy's weights really differ


def test_files_on_disk(saved: Path) -> None:
    data = (saved / WEIGHTS_FILE).read_bytes()
    text = (saved / MANIFEST_FILE).read_text()
    raw = json.loads(text)
    assert raw["weights_sha256"] == hashlib.sha256(data).hexdigest()
    assert list(raw) == sorted(raw)  # sorted keys, diff-friendly
    assert raw["created"].endswith("Z") or raw["created"].endswith("+00:00")
    with safe_open(str(saved / WEIGHTS_FILE), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert not any("esc50" in k for k in f.keys())  # noqa: SIM118


def test_load_without_backbone_uses_the_recorded_config(saved: Path) -> None:
    ckpt = load_checkpoint(saved)
    assert ckpt.manifest.id == "esc50@2"


def test_from_bank_refuses_labels_that_do_not_fit_the_head(
    tiny_backbone: VisionTransformer,
) -> None:
    bank, _ = make_checkpoint(tiny_backbone, "linear")
    common: dict[str, Any] = {
        "name": "esc50",
        "version": 2,
        "task": "t",
        "features": FeatureConfig(),
        "backbone": tiny_backbone,
    }
    with pytest.raises(ConfigError, match="2 labels for a head with 3 classes"):
        AdapterCheckpoint.from_bank(
            bank, "esc50@2", task_type="multiclass", labels=["a", "b"], **common
        )
    with pytest.raises(ConfigError, match="does not match the single-label head"):
        AdapterCheckpoint.from_bank(
            bank, "esc50@2", task_type="multilabel", labels=LABELS, **common
        )
    with pytest.raises(ConfigError, match="name"):
        AdapterCheckpoint.from_bank(
            bank, "esc50@2", task_type="multiclass", labels=LABELS, **{**common, "name": "ESC 50"}
        )


def test_load_into_refuses_a_bank_for_another_backbone(
    saved: Path, tiny_backbone: VisionTransformer, tiny_deit: VisionTransformer
) -> None:
    ckpt = load_checkpoint(saved, backbone=tiny_backbone)
    with pytest.raises(IncompatibleBackbone, match="esc50@2"):
        ckpt.load_into(AdapterBank.for_backbone(tiny_deit))


# -- bad checkpoints -------------------------------------------------------------------------

UNPICKLED: list[str] = []


def _mark_unpickled() -> dict[str, Tensor]:
    UNPICKLED.append("unpickled")
    return {}


class _Payload:
    """Unpickling this calls :func:`_mark_unpickled`: proof that something unpickled the file."""

    def __reduce__(self) -> tuple[Callable[[], dict[str, Tensor]], tuple[()]]:
        return _mark_unpickled, ()


def _edit_manifest(directory: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    raw = json.loads((directory / MANIFEST_FILE).read_text())
    edit(raw)
    (directory / MANIFEST_FILE).write_text(json.dumps(raw))


def _write_weights(directory: Path, data: bytes, *, fix_checksum: bool = True) -> None:
    (directory / WEIGHTS_FILE).write_bytes(data)
    if fix_checksum:
        sha = hashlib.sha256(data).hexdigest()
        _edit_manifest(directory, lambda m: m.__setitem__("weights_sha256", sha))


def _edit_tensors(directory: Path, edit: Callable[[dict[str, Tensor]], None]) -> None:
    tensors = load_file(str(directory / WEIGHTS_FILE))
    edit(tensors)
    tmp = directory / "tmp.safetensors"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    data = tmp.read_bytes()
    tmp.unlink()
    _write_weights(directory, data)


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda m: m.__setitem__(key, value)


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda m: m.__delitem__(key)


def _poison(value: float) -> Callable[[dict[str, Tensor]], None]:
    def edit(t: dict[str, Tensor]) -> None:
        t["head.fc.bias"][1] = value

    return edit


def _flip_byte(d: Path) -> None:
    data = bytearray((d / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    _write_weights(d, bytes(data), fix_checksum=False)


LOA = "blocks.0.attn_parallel.down"  # a LoAA tensor name, checked to exist below

BAD: dict[str, tuple[Callable[[Path], object], type[Exception], str]] = {
    "wrong backbone fingerprint": (
        lambda d: _edit_manifest(d, lambda m: m["backbone"].__setitem__("fingerprint", "0" * 16)),
        IncompatibleBackbone,
        "made for backbone test_vit@0000000000000000",
    ),
    "missing tensor": (
        lambda d: _edit_tensors(d, _drop(LOA)),
        InvalidCheckpoint,
        f"missing tensors ['{LOA}']",
    ),
    "extra tensor": (
        lambda d: _edit_tensors(d, lambda t: t.__setitem__("blocks.0.bogus", torch.zeros(2))),
        InvalidCheckpoint,
        "unexpected tensors ['blocks.0.bogus']",
    ),
    "mis-shaped tensor": (
        lambda d: _edit_tensors(d, lambda t: t.__setitem__("head.fc.bias", torch.zeros(4))),
        InvalidCheckpoint,
        "head.fc.bias has shape [4], expected [3]",
    ),
    "integer tensor": (
        lambda d: _edit_tensors(
            d, lambda t: t.__setitem__("head.fc.bias", torch.zeros(3, dtype=torch.int32))
        ),
        InvalidCheckpoint,
        "head.fc.bias has dtype I32",
    ),
    "NaN tensor": (
        lambda d: _edit_tensors(d, _poison(float("nan"))),
        InvalidCheckpoint,
        "['head.fc.bias'] contain NaN or Inf",
    ),
    "Inf tensor": (
        lambda d: _edit_tensors(d, _poison(float("-inf"))),
        InvalidCheckpoint,
        "['head.fc.bias'] contain NaN or Inf",
    ),
    "checksum mismatch": (_flip_byte, InvalidCheckpoint, "sha256"),
    "parameter count that is not the tensors'": (
        lambda d: _edit_manifest(d, _set("trainable_params", 7)),
        InvalidCheckpoint,
        "the manifest says trainable_params=7, but its tensors hold",
    ),
    "unknown method": (
        lambda d: _edit_manifest(d, _set("method", "lol")),
        InvalidCheckpoint,
        "method: Value error, unknown adapter method 'lol'; choose one of: linear,",
    ),
    "config invalid for its method": (
        lambda d: _edit_manifest(d, lambda m: m["config"].__setitem__("rank", 0)),
        InvalidCheckpoint,
        "config: Value error, invalid config for method 'loaa': rank:",
    ),
    "config of another shape": (
        lambda d: _edit_manifest(d, lambda m: m["config"].__setitem__("rank", 6)),
        InvalidCheckpoint,
        f"{LOA} has shape",
    ),
    "missing field": (
        lambda d: _edit_manifest(d, _drop("labels")),
        InvalidCheckpoint,
        "labels: Field required",
    ),
    "duplicate labels": (
        lambda d: _edit_manifest(d, _set("labels", ["dog", "rain", "dog"])),
        InvalidCheckpoint,
        "duplicate labels ['dog']",
    ),
    "bad name": (
        lambda d: _edit_manifest(d, _set("name", "../etc")),
        InvalidCheckpoint,
        "name: Value error, name '../etc' must be",
    ),
    "newer format": (
        lambda d: _edit_manifest(d, _set("format_version", 99)),
        InvalidCheckpoint,
        "format_version 99 is not supported",
    ),
    "bad sha field": (
        lambda d: _edit_manifest(d, _set("weights_sha256", "abc")),
        InvalidCheckpoint,
        "weights_sha256",
    ),
    "invalid JSON": (
        lambda d: (d / MANIFEST_FILE).write_text('{"name": "esc50",'),
        InvalidCheckpoint,
        "is not valid JSON",
    ),
    "manifest not an object": (
        lambda d: (d / MANIFEST_FILE).write_text("[1, 2]"),
        InvalidCheckpoint,
        "must hold a JSON object",
    ),
    "no manifest": (lambda d: (d / MANIFEST_FILE).unlink(), InvalidCheckpoint, "no manifest.json"),
    "no weights": (
        lambda d: (d / WEIGHTS_FILE).unlink(),
        InvalidCheckpoint,
        "no adapter.safetensors",
    ),
    "pickle instead of safetensors": (
        lambda d: _write_weights(d, pickle.dumps({"head.fc.bias": _Payload()})),
        InvalidCheckpoint,
        "is not a valid safetensors file",
    ),
    "truncated safetensors": (
        lambda d: _write_weights(d, (d / WEIGHTS_FILE).read_bytes()[:-8]),
        InvalidCheckpoint,
        "is not a valid safetensors file",
    ),
}


def test_bad_table_uses_real_tensor_names(saved: Path) -> None:
    assert LOA in load_checkpoint(saved).tensors


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoint_is_refused(
    case: str, saved: Path, tiny_backbone: VisionTransformer
) -> None:
    corrupt, error, message = BAD[case]
    corrupt(saved)
    UNPICKLED.clear()
    with pytest.raises(error) as info:
        load_checkpoint(saved, backbone=tiny_backbone)
    assert message in str(info.value)
    assert not UNPICKLED


def test_every_header_problem_is_reported_at_once(
    saved: Path, tiny_backbone: VisionTransformer
) -> None:
    def edit(t: dict[str, Tensor]) -> None:
        del t[LOA]
        t["extra"] = torch.zeros(1)
        t["head.fc.bias"] = torch.zeros(5, dtype=torch.int64)

    _edit_tensors(saved, edit)
    with pytest.raises(InvalidCheckpoint) as info:
        load_checkpoint(saved, backbone=tiny_backbone)
    for part in (LOA, "'extra'", "head.fc.bias has shape [5]", "head.fc.bias has dtype I64"):
        assert part in str(info.value)


def test_another_backbone_is_refused_with_both_names(
    saved: Path, tiny_backbone: VisionTransformer
) -> None:
    other = build_random("test_vit", seed=3)
    with pytest.raises(IncompatibleBackbone) as info:
        load_checkpoint(saved, backbone=other)
    text = str(info.value)
    assert f"test_vit@{tiny_backbone.fingerprint()}" in text
    assert f"this server runs test_vit@{other.fingerprint()}" in text


def test_oversized_file_is_refused_before_hashing(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_hash(path: Path) -> str:
        raise AssertionError("hashed an oversized file")

    monkeypatch.setattr("lookaside.checkpoint.validate.weights_sha256", no_hash)
    with pytest.raises(InvalidCheckpoint, match=r"over the limit of 100 bytes \(max_bytes\)"):
        load_checkpoint(saved, max_bytes=100)


def test_tensors_are_not_read_before_the_header_is_checked(
    saved: Path, tiny_backbone: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _edit_tensors(saved, lambda t: t.__setitem__("extra", torch.zeros(1)))
    read: list[str] = []
    import lookaside.checkpoint.validate as module

    real = module.read_tensors

    def spy(*args: Any, **kwargs: Any) -> dict[str, Tensor]:
        read.append("read")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "read_tensors", spy)
    with pytest.raises(InvalidCheckpoint, match="unexpected tensors"):
        load_checkpoint(saved, backbone=tiny_backbone)
    assert read == []
    _edit_tensors(saved, lambda t: t.__delitem__("extra"))
    load_checkpoint(saved, backbone=tiny_backbone)
    assert read == ["read"]  # the spy does see a real read


# -- forward compatibility -------------------------------------------------------------------


def test_unknown_manifest_keys_warn_but_load(saved: Path, tiny_backbone: VisionTransformer) -> None:
    def edit(m: dict[str, Any]) -> None:
        m["quantisation"] = "int8"
        m["backbone"]["revision"] = "abc"
        m["features"]["dither"] = 0.0

    _edit_manifest(saved, edit)
    with pytest.warns(ManifestWarning) as record:
        ckpt = load_checkpoint(saved, backbone=tiny_backbone)
    text = " ".join(str(w.message) for w in record)
    assert "quantisation" in text
    assert "revision" in text
    assert "dither" in text
    assert ckpt.manifest.id == "esc50@2"
    assert "quantisation" not in ckpt.manifest.model_dump()


def test_save_is_refused_for_tensors_that_would_not_load(
    tiny_backbone: VisionTransformer, tmp_path: Path
) -> None:
    _, ckpt = make_checkpoint(tiny_backbone)
    ckpt.tensors["head.fc.bias"] = torch.full((3,), float("nan"))
    with pytest.raises(InvalidCheckpoint, match="NaN"):
        ckpt.save(tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_manifest_normalises_config_and_time(tiny_backbone: VisionTransformer) -> None:
    _, ckpt = make_checkpoint(tiny_backbone, "loaa")
    raw = ckpt.manifest.model_dump(mode="json")
    raw["config"] = {"rank": 5, "kernels": "attn:T"}
    raw["created"] = "2024-01-01T12:00:00+02:00"
    m = AdapterManifest.model_validate(raw)
    assert m.config["kernels"] == {"attn": "T"}
    assert m.config["layers"] is None  # defaults are written out
    assert m.created.utcoffset() is not None
    assert m.created.hour == 10


# -- atomic save -----------------------------------------------------------------------------


def test_save_refuses_to_overwrite_unless_asked(
    saved: Path, tiny_backbone: VisionTransformer
) -> None:
    bank, _ = make_checkpoint(tiny_backbone, "lora")
    new = AdapterCheckpoint.from_bank(
        bank,
        "esc50@2",
        name="esc50",
        version=2,
        task="t",
        task_type="multiclass",
        labels=LABELS,
        features=FeatureConfig(),
        backbone=tiny_backbone,
    )
    with pytest.raises(FileExistsError, match="overwrite=True"):
        new.save(saved)
    assert load_manifest(saved).method == "loaa"
    new.save(saved, overwrite=True)
    assert load_checkpoint(saved, backbone=tiny_backbone).manifest.method == "lora"
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]


def test_save_into_an_existing_empty_directory(
    tiny_backbone: VisionTransformer, tmp_path: Path
) -> None:
    _, ckpt = make_checkpoint(tiny_backbone, "linear")
    (tmp_path / "a").mkdir()
    ckpt.save(tmp_path / "a")
    assert load_checkpoint(tmp_path / "a").manifest.method == "linear"


def test_crash_during_rename_leaves_nothing(
    tiny_backbone: VisionTransformer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ckpt = make_checkpoint(tiny_backbone)

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        ckpt.save(tmp_path / "esc50" / "2")
    assert list((tmp_path / "esc50").iterdir()) == []


def test_crash_during_overwrite_keeps_the_old_adapter(
    saved: Path, tiny_backbone: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, new = make_checkpoint(tiny_backbone, "linear")
    real_replace = os.replace
    calls: list[object] = []

    def crash_second(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 2:  # old moved aside, new about to be renamed in
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_second)
    with pytest.raises(OSError, match="simulated crash"):
        new.save(saved, overwrite=True)
    monkeypatch.undo()
    assert load_checkpoint(saved, backbone=tiny_backbone).manifest.method == "loaa"
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]


# -- the backbone fingerprint when an adapter enters a bank ----------------------------------


def test_load_into_checks_the_bank_fingerprint_even_without_backbone(
    saved: Path, tiny_backbone: VisionTransformer
) -> None:
    ckpt = load_checkpoint(saved)  # no backbone= here: the bank check must still happen
    other = build_random("test_vit", seed=3)  # same shape, other weights
    assert other.cfg == tiny_backbone.cfg
    with pytest.raises(IncompatibleBackbone) as info:
        ckpt.load_into(AdapterBank.for_backbone(other))
    text = str(info.value)
    assert f"made for backbone test_vit@{tiny_backbone.fingerprint()}" in text
    assert f"this bank serves test_vit@{other.fingerprint()}" in text
    same = build_random("test_vit", seed=1)  # the same weights, built again
    assert ckpt.load_into(AdapterBank.for_backbone(same)) == "esc50@2"


def test_load_into_a_bank_without_fingerprint_says_how_to_build_one(
    saved: Path, tiny_backbone: VisionTransformer
) -> None:
    ckpt = load_checkpoint(saved, backbone=tiny_backbone)
    bank = AdapterBank(tiny_backbone.cfg)
    with pytest.raises(ConfigError, match=r"AdapterBank\.for_backbone\(backbone\)"):
        ckpt.load_into(bank)
    assert bank.ids() == []


# -- shapes without allocation ---------------------------------------------------------------


@pytest.mark.parametrize("method", AUDIO_METHODS)
def test_meta_shapes_equal_the_real_adapter(method: str, tiny_backbone: VisionTransformer) -> None:
    """expected_shapes (meta device + arithmetic) against a really built stack and head."""
    spec = get_method(method)
    cfg = spec.parse_config(CONFIGS.get(method, {}))
    head = HeadConfig(num_classes=7)
    real: dict[str, tuple[int, ...]] = {}
    if not spec.head_only:
        stack = AdapterStack(spec, cfg, tiny_backbone.cfg, 1)
        real.update({n: tuple(t.shape) for n, t in stack.slot_tensors(0).items()})
    module = AdapterHead(head, tiny_backbone.cfg.embed_dim)
    real.update({f"head.{n}": tuple(t.shape) for n, t in module.state_dict().items()})
    assert expected_shapes(tiny_backbone.cfg, method, cfg, head) == real


def test_meta_shapes_do_not_move_other_threads_to_meta(
    tiny_backbone: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation runs beside the engine's thread: its meta-device scope must stay its own."""
    import lookaside.adapters.stack as module

    seen: list[torch.device] = []

    def engine() -> None:
        seen.append(torch.zeros(1).device)

    class Pausing(AdapterStack):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            seen.append(torch.zeros(1).device)  # inside the meta scope
            other = threading.Thread(target=engine)
            other.start()
            other.join()

    monkeypatch.setattr(module, "AdapterStack", Pausing)
    clear_cache()  # site shapes are memoised: build them now, under the patch
    expected_shapes(tiny_backbone.cfg, "lora", {"rank": 2}, HeadConfig(num_classes=2))
    clear_cache()  # forget the shapes the patched stack gave
    assert seen == [torch.device("meta"), torch.device("cpu")]


def test_from_bank_refuses_a_bank_of_another_backbone(tiny_backbone: VisionTransformer) -> None:
    other = build_random("test_vit", seed=3)
    bank = AdapterBank.for_backbone(other)
    bank.add("a", "linear", {}, HeadConfig(num_classes=3))
    with pytest.raises(ConfigError, match="pass the backbone the adapter was trained with"):
        AdapterCheckpoint.from_bank(
            bank,
            "a",
            name="a",
            version=1,
            task="t",
            task_type="multiclass",
            labels=LABELS,
            features=FeatureConfig(),
            backbone=tiny_backbone,
        )


# -- uploads: the same validation on bytes ---------------------------------------------------

FILES_NEEDED = {"no manifest", "no weights"}


@pytest.mark.parametrize("case", [c for c in BAD if c not in FILES_NEEDED])
def test_bad_upload_is_refused_like_a_bad_directory(
    case: str, saved: Path, tiny_backbone: VisionTransformer
) -> None:
    corrupt, error, message = BAD[case]
    corrupt(saved)
    UNPICKLED.clear()
    with pytest.raises(error) as info:
        validate_checkpoint_bytes(
            (saved / MANIFEST_FILE).read_bytes(),
            (saved / WEIGHTS_FILE).read_bytes(),
            backbone=tiny_backbone,
        )
    assert message in str(info.value)
    assert not UNPICKLED


def test_tensors_read_equal_what_safetensors_reads(
    saved: Path, tiny_backbone: VisionTransformer
) -> None:
    """The header/data reader against the safetensors library, over every accepted dtype."""
    dtypes = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

    def mix(t: dict[str, Tensor]) -> None:
        for i, name in enumerate(sorted(t)):
            t[name] = t[name].to(dtypes[i % len(dtypes)])

    _edit_tensors(saved, mix)
    ckpt = load_checkpoint(saved, backbone=tiny_backbone)
    reference = load_file(str(saved / WEIGHTS_FILE))
    assert {t.dtype for t in ckpt.tensors.values()} == set(dtypes)
    assert ckpt.tensors.keys() == reference.keys()
    for name, tensor in reference.items():
        assert ckpt.tensors[name].dtype == tensor.dtype
        assert torch.equal(ckpt.tensors[name], tensor), name


def test_valid_upload_gives_what_the_directory_gives(
    saved: Path, tiny_backbone: VisionTransformer
) -> None:
    upload = validate_checkpoint_bytes(
        (saved / MANIFEST_FILE).read_bytes(),
        (saved / WEIGHTS_FILE).read_bytes(),
        backbone=tiny_backbone,
    )
    disk = load_checkpoint(saved, backbone=tiny_backbone)
    assert upload.manifest == disk.manifest
    assert upload.tensors.keys() == disk.tensors.keys()
    for name, tensor in disk.tensors.items():
        assert torch.equal(upload.tensors[name], tensor)
        assert upload.tensors[name].dtype == tensor.dtype


def _header(weights: bytes) -> tuple[dict[str, Any], bytes]:
    size = int.from_bytes(weights[:8], "little")
    header: dict[str, Any] = json.loads(weights[8 : 8 + size])
    return header, weights[8 + size :]


def _pack(header: dict[str, Any], data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def _shift_first(weights: bytes) -> bytes:
    header, data = _header(weights)
    first = min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    header[first]["data_offsets"][0] += 4
    return _pack(header, data)


def _respan(weights: bytes) -> bytes:
    header, data = _header(weights)
    header["head.fc.bias"]["shape"] = [2]  # 3 floats of data for a 2-float tensor
    return _pack(header, data)


def _dtype(weights: bytes) -> bytes:
    header, data = _header(weights)
    header["head.fc.bias"]["dtype"] = "Q4"
    return _pack(header, data)


CRAFTED: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "header length near 2**64": (
        lambda w: (2**64 - 1).to_bytes(8, "little") + w[8:],
        "its header claims 18446744073709551615 bytes, over max_header_bytes",
    ),
    "header past the end": (
        lambda w: (len(w)).to_bytes(8, "little") + w[8:],
        "past the end of the",
    ),
    "shorter than 8 bytes": (lambda w: w[:5], "shorter than the 8-byte header length"),
    "header not JSON": (lambda w: (4).to_bytes(8, "little") + b"\xff\xfe{[" + w, "not UTF-8 JSON"),
    "header not an object": (lambda w: _pack([1, 2], b""), "not a JSON object"),  # type: ignore[arg-type]
    "overlapping offsets": (_shift_first, "spans"),
    "span does not match the shape": (_respan, "tensor 'head.fc.bias' spans 12 bytes"),
    "unknown dtype": (_dtype, "tensor 'head.fc.bias' has no valid dtype/shape/data_offsets"),
    "trailing bytes": (lambda w: w + b"\0" * 16, "16 bytes after the last tensor"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_safetensors_is_refused_before_any_data_is_read(
    case: str, saved: Path, tiny_backbone: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lookaside.checkpoint.validate as module

    craft, message = CRAFTED[case]
    _write_weights(saved, craft((saved / WEIGHTS_FILE).read_bytes()))
    monkeypatch.setattr(module, "read_tensors", lambda *a, **k: pytest.fail("read tensor data"))
    loads: list[Callable[[], AdapterCheckpoint]] = [
        lambda: load_checkpoint(saved, backbone=tiny_backbone),
        lambda: validate_checkpoint_bytes(
            (saved / MANIFEST_FILE).read_bytes(),
            (saved / WEIGHTS_FILE).read_bytes(),
            backbone=tiny_backbone,
        ),
    ]
    for load in loads:
        with pytest.raises(InvalidCheckpoint) as info:
            load()
        assert "is not a valid safetensors file" in str(info.value)
        assert message in str(info.value)
