"""AdapterStore: version assignment, idempotent uploads, atomic pointer, deletes, refusals."""

from __future__ import annotations

import hashlib
import json
import pickle
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from lookaside.adapters import HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.checkpoint import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AdapterCheckpoint,
    ValidatedCheckpoint,
)
from lookaside.errors import AdapterNotFound, IncompatibleBackbone, InvalidCheckpoint
from lookaside.features import FeatureConfig
from service.store import (
    ACTIVE_FILE,
    ActiveVersionConflict,
    AdapterStore,
    UploadTooLarge,
)
from tests.support import randomise

LABELS = ["dog", "rain", "siren"]


def make_upload(
    backbone: VisionTransformer, name: str = "esc50", *, seed: int = 0, version: int = 1
) -> tuple[bytes, bytes]:
    """(manifest.json bytes, adapter.safetensors bytes) of a small LoRA adapter with random
    (non-zero) weights drawn from ``seed``."""
    bank = AdapterBank(backbone.cfg)
    bank.add("x@1", "lora", {"rank": 2, "alpha": 4.0}, HeadConfig(num_classes=len(LABELS)))
    randomise(bank, "x@1", seed=seed)
    ckpt = AdapterCheckpoint.from_bank(
        bank,
        "x@1",
        name=name,
        version=version,
        task="environmental sounds",
        task_type="multiclass",
        labels=LABELS,
        features=FeatureConfig(),
        backbone=backbone,
        metrics={"accuracy": 0.75},
    )
    with tempfile.TemporaryDirectory() as tmp:
        ckpt.save(Path(tmp) / "a")
        return (Path(tmp) / "a" / MANIFEST_FILE).read_bytes(), (
            Path(tmp) / "a" / WEIGHTS_FILE
        ).read_bytes()


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) -> sha256 of its bytes; directories -> ''."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
    return out


def edit_manifest(manifest: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    data = json.loads(manifest)
    edit(data)
    return json.dumps(data).encode()


def retensor(
    manifest: bytes, weights: bytes, edit: Callable[[dict[str, torch.Tensor]], None]
) -> tuple[bytes, bytes]:
    """Weights with ``edit`` applied, and the manifest's sha256 updated to match them (so the
    refusal comes from the tensor checks, not the checksum)."""
    tensors = dict(load_tensors(weights))
    edit(tensors)
    data = save_tensors(tensors, metadata={"format": "pt"})

    def fix(m: dict[str, Any]) -> None:
        m["weights_sha256"] = hashlib.sha256(data).hexdigest()

    return edit_manifest(manifest, fix), data


@pytest.fixture(scope="module")
def upload(tiny_backbone: VisionTransformer) -> tuple[bytes, bytes]:
    return make_upload(tiny_backbone, seed=1)


@pytest.fixture(scope="module")
def upload2(tiny_backbone: VisionTransformer) -> tuple[bytes, bytes]:
    return make_upload(tiny_backbone, seed=2)


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore(tmp_path / "store", max_weights_bytes=1_000_000)


# -- versions and pointer --------------------------------------------------------------------


def test_first_upload_is_version_1_and_active_with_the_store_version_written(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    manifest, weights = make_upload(tiny_backbone, seed=1, version=7)
    result = store.put(manifest, weights, backbone=tiny_backbone)
    assert (result.name, result.version, result.created, result.active) == ("esc50", 1, True, True)
    assert store.names() == ["esc50"]
    assert store.versions("esc50") == [1]
    assert store.active("esc50") == 1
    on_disk = store.root / "esc50" / "1"
    assert json.loads((on_disk / MANIFEST_FILE).read_bytes())["version"] == 1
    assert (on_disk / WEIGHTS_FILE).read_bytes() == weights  # byte for byte: sha256 unchanged
    assert (store.root / "esc50" / ACTIVE_FILE).read_text().strip() == "1"
    assert store.manifest("esc50", 1).version == 1


def test_identical_reupload_returns_the_existing_version(
    store: AdapterStore,
    tiny_backbone: VisionTransformer,
    upload: tuple[bytes, bytes],
    upload2: tuple[bytes, bytes],
) -> None:
    store.put(*upload, backbone=tiny_backbone)
    store.put(*upload2, backbone=tiny_backbone)
    before = tree(store.root)
    # Same content with another version number and creation time: still the same adapter.
    again = edit_manifest(upload[0], lambda m: m.update(version=9, created="2020-01-01T00:00:00Z"))
    result = store.put(again, upload[1], backbone=tiny_backbone)
    assert (result.version, result.created) == (1, False)
    assert tree(store.root) == before
    # Same weights but another manifest (labels renamed) is new content.
    relabeled = edit_manifest(upload[0], lambda m: m.update(labels=["a", "b", "c"]))
    assert store.put(relabeled, upload[1], backbone=tiny_backbone).version == 3


def test_put_hands_back_the_validated_checkpoint_as_stored(
    store: AdapterStore,
    tiny_backbone: VisionTransformer,
    upload: tuple[bytes, bytes],
    upload2: tuple[bytes, bytes],
) -> None:
    """What the registry loads an activated upload from, instead of reading it back."""
    store.put(*upload, backbone=tiny_backbone)
    for result in (
        store.put(*upload2, backbone=tiny_backbone),  # written now
        store.put(*upload2, backbone=tiny_backbone),  # identical: nothing written
    ):
        assert isinstance(result.checkpoint, ValidatedCheckpoint)  # the bank skips its scan
        assert result.checkpoint.manifest == store.manifest("esc50", 2) == result.manifest
        loaded = store.load("esc50", 2, backbone=tiny_backbone)
        assert isinstance(loaded, ValidatedCheckpoint)
        on_disk = loaded.tensors
        assert sorted(result.checkpoint.tensors) == sorted(on_disk)
        for name, tensor in on_disk.items():
            assert torch.equal(result.checkpoint.tensors[name], tensor), name


def test_later_versions_are_activated_only_when_asked(
    store: AdapterStore,
    tiny_backbone: VisionTransformer,
    upload: tuple[bytes, bytes],
    upload2: tuple[bytes, bytes],
) -> None:
    store.put(*upload, backbone=tiny_backbone)
    second = store.put(*upload2, backbone=tiny_backbone)
    assert (second.version, second.active, store.active("esc50")) == (2, False, 1)
    store.activate("esc50", 2)
    assert store.active("esc50") == 2
    store.activate("esc50", 1)  # rollback
    assert store.active("esc50") == 1
    third = store.put(*make_upload(tiny_backbone, seed=3), backbone=tiny_backbone, activate=True)
    assert (third.version, third.active, store.active("esc50")) == (3, True, 3)


def test_version_numbers_are_not_reused_after_a_delete(
    store: AdapterStore,
    tiny_backbone: VisionTransformer,
    upload: tuple[bytes, bytes],
    upload2: tuple[bytes, bytes],
) -> None:
    store.put(*upload, backbone=tiny_backbone)
    store.put(*upload2, backbone=tiny_backbone)
    store.delete_version("esc50", 2)
    assert store.versions("esc50") == [1]
    assert store.put(*make_upload(tiny_backbone, seed=3), backbone=tiny_backbone).version == 3
    # Deleting the whole name forgets its history.
    assert store.delete("esc50") == [1, 3]
    assert store.names() == []
    assert not (store.root / "esc50").exists()
    assert store.put(*upload, backbone=tiny_backbone).version == 1


def test_deleting_the_active_version_needs_force_and_moves_the_pointer(
    store: AdapterStore,
    tiny_backbone: VisionTransformer,
    upload: tuple[bytes, bytes],
    upload2: tuple[bytes, bytes],
) -> None:
    store.put(*upload, backbone=tiny_backbone)
    store.put(*upload2, backbone=tiny_backbone, activate=True)
    store.put(*make_upload(tiny_backbone, seed=3), backbone=tiny_backbone)
    store.activate("esc50", 2)
    with pytest.raises(ActiveVersionConflict, match=r"esc50@2 is the active.*1, 3.*force=true"):
        store.delete_version("esc50", 2)
    assert store.versions("esc50") == [1, 2, 3]
    assert store.delete_version("esc50", 2, force=True) == 3  # newest remaining
    assert (store.versions("esc50"), store.active("esc50")) == ([1, 3], 3)
    assert store.delete_version("esc50", 1) == 3
    assert store.delete_version("esc50", 3, force=True) is None  # the last one: name gone
    assert store.names() == []


def test_unknown_names_and_versions_list_what_exists(
    store: AdapterStore, tiny_backbone: VisionTransformer, upload: tuple[bytes, bytes]
) -> None:
    store.put(*upload, backbone=tiny_backbone)
    with pytest.raises(AdapterNotFound, match=r"'esc50@4'.*versions of 'esc50': 1 \(active: 1\)"):
        store.manifest("esc50", 4)
    with pytest.raises(AdapterNotFound, match=r"no adapter named 'speech'.*in the store: esc50"):
        store.activate("speech", 1)
    with pytest.raises(AdapterNotFound, match="lower-case"):
        store.delete_version("../esc50", 1)
    with pytest.raises(AdapterNotFound, match="esc50"):
        store.delete("nope")
    assert store.versions("../..") == []
    assert store.active("ESC50") is None


def test_load_validates_and_returns_the_stored_tensors(
    store: AdapterStore, tiny_backbone: VisionTransformer, upload: tuple[bytes, bytes]
) -> None:
    store.put(*upload, backbone=tiny_backbone)
    ckpt = store.load("esc50", 1, backbone=tiny_backbone)
    expected = load_tensors(upload[1])
    assert ckpt.manifest.id == "esc50@1"
    assert sorted(ckpt.tensors) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(ckpt.tensors[key], value, rtol=0, atol=0)
    # A version edited by hand on disk is refused when loaded.
    path = store.root / "esc50" / "1" / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidCheckpoint, match="sha256"):
        store.load("esc50", 1, backbone=tiny_backbone)


def test_a_fresh_store_on_the_same_root_sees_what_was_acknowledged(
    store: AdapterStore,
    tiny_backbone: VisionTransformer,
    upload: tuple[bytes, bytes],
    upload2: tuple[bytes, bytes],
) -> None:
    store.put(*upload, backbone=tiny_backbone)
    store.put(*upload2, backbone=tiny_backbone, activate=True)
    store.put(*make_upload(tiny_backbone, "speech", seed=4), backbone=tiny_backbone)
    store.delete_version("esc50", 1)
    again = AdapterStore(store.root)
    assert again.names() == ["esc50", "speech"]
    assert (again.versions("esc50"), again.active("esc50")) == ([2], 2)
    assert (again.versions("speech"), again.active("speech")) == ([1], 1)
    assert again.put(*make_upload(tiny_backbone, seed=5), backbone=tiny_backbone).version == 3


def test_crash_leftovers_are_invisible_and_removed_by_cleanup(
    store: AdapterStore, tiny_backbone: VisionTransformer, upload: tuple[bytes, bytes]
) -> None:
    store.put(*upload, backbone=tiny_backbone)
    # What a crash can leave: a half-written version dir, a half-written pointer, a name dir
    # whose first version never arrived, and a half-deleted version.
    (store.root / "esc50" / ".2.tmp-abc123").mkdir()
    (store.root / "esc50" / ".2.tmp-abc123" / WEIGHTS_FILE).write_bytes(b"partial")
    (store.root / "esc50" / ".ACTIVE.tmp-x1y2").write_text("2")
    (store.root / "orphan").mkdir()
    (store.root / "orphan" / ".1.tmp-zz9").mkdir()
    (store.root / "esc50" / ".7.tmp-del_0011").mkdir()
    assert (store.names(), store.versions("esc50"), store.active("esc50")) == (["esc50"], [1], 1)
    removed = {p.name for p in AdapterStore(store.root).cleanup()}
    assert removed == {
        ".2.tmp-abc123",
        ".ACTIVE.tmp-x1y2",
        "orphan",
        ".1.tmp-zz9",
        ".7.tmp-del_0011",
    }
    assert sorted(p.name for p in (store.root / "esc50").iterdir()) == ["1", ACTIVE_FILE, "LAST"]
    assert sorted(p.name for p in store.root.iterdir()) == ["esc50"]


def test_concurrent_uploads_of_one_name_get_distinct_versions(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    uploads = [make_upload(tiny_backbone, seed=10 + i) for i in range(6)]
    results: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(uploads))

    def put(data: tuple[bytes, bytes]) -> None:
        start.wait()
        try:
            results.append(store.put(*data, backbone=tiny_backbone).version)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(u,)) for u in uploads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    assert store.versions("esc50") == [1, 2, 3, 4, 5, 6]
    # Each version holds the weights its upload sent.
    stored = {(store.root / "esc50" / str(v) / WEIGHTS_FILE).read_bytes() for v in results}
    assert stored == {w for _, w in uploads}


# -- refusals: nothing changes ---------------------------------------------------------------


def _pickle_weights() -> bytes:
    return pickle.dumps({"head.weight": [[0.0] * 3]})


def _bad_uploads(
    manifest: bytes, weights: bytes, other: VisionTransformer
) -> dict[str, tuple[bytes, bytes, type[Exception], str]]:
    """Refused uploads: case -> (manifest, weights, error type, message pattern)."""

    def nan(t: dict[str, torch.Tensor]) -> None:
        key = sorted(t)[0]
        t[key] = t[key].clone()
        t[key].view(-1)[0] = float("nan")

    def wrong_shape(t: dict[str, torch.Tensor]) -> None:
        t["head.fc.weight"] = torch.zeros(5, 64)

    other_fp = edit_manifest(
        manifest, lambda m: m["backbone"].update(fingerprint=other.fingerprint())
    )
    return {
        "corrupt weights": (manifest, b"\x13\x37" * 500, InvalidCheckpoint, "sha256"),
        "pickle as weights": (
            *retensor_raw(manifest, _pickle_weights()),
            InvalidCheckpoint,
            "safetensors",
        ),
        "nan weights": (*retensor(manifest, weights, nan), InvalidCheckpoint, "NaN or Inf"),
        "wrong shape": (*retensor(manifest, weights, wrong_shape), InvalidCheckpoint, "head.fc"),
        "other backbone": (other_fp, weights, IncompatibleBackbone, "made for backbone"),
        "upper-case name": (
            edit_manifest(manifest, lambda m: m.update(name="ESC50")),
            weights,
            InvalidCheckpoint,
            "lower-case",
        ),
        "path traversal": (
            edit_manifest(manifest, lambda m: m.update(name="../../etc")),
            weights,
            InvalidCheckpoint,
            "lower-case",
        ),
        "not json": (b"{not json", weights, InvalidCheckpoint, "JSON"),
        "empty weights": (manifest, b"", InvalidCheckpoint, "empty"),
        "too large": (manifest, b"\0" * 1_000_001, UploadTooLarge, "limit of 1000000 bytes"),
    }


def retensor_raw(manifest: bytes, data: bytes) -> tuple[bytes, bytes]:
    """Arbitrary bytes as weights with a matching sha256 in the manifest."""
    digest = hashlib.sha256(data).hexdigest()
    return edit_manifest(manifest, lambda m: m.update(weights_sha256=digest)), data


CASES = [
    "corrupt weights",
    "pickle as weights",
    "nan weights",
    "wrong shape",
    "other backbone",
    "upper-case name",
    "path traversal",
    "not json",
    "empty weights",
    "too large",
]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_upload_is_refused_and_changes_nothing(
    case: str,
    store: AdapterStore,
    tiny_backbone: VisionTransformer,
    tiny_deit: VisionTransformer,
    upload: tuple[bytes, bytes],
) -> None:
    store.put(*upload, backbone=tiny_backbone)
    manifest, weights, error, pattern = _bad_uploads(*upload, tiny_deit)[case]
    before = tree(store.root)
    with pytest.raises(error, match=pattern):
        store.put(manifest, weights, backbone=tiny_backbone, activate=True)
    assert tree(store.root) == before
    assert not (store.root.parent / "etc").exists()


def test_the_case_table_is_complete(
    tiny_backbone: VisionTransformer, tiny_deit: VisionTransformer, upload: tuple[bytes, bytes]
) -> None:
    assert sorted(_bad_uploads(*upload, tiny_deit)) == sorted(CASES)
