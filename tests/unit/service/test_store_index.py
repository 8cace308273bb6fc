"""AdapterStore's in-memory index: the work of an upload, a resolve and a metrics scrape counted in
filesystem calls (flat from 10 to 300 versions and with 1,000 names; zero for reads), startup
repair of a name left without an active version, the index kept in step with the disk, bounded
"no such adapter" messages, and pages of names."""

from __future__ import annotations

import builtins
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, AdapterCheckpoint, CheckpointLimits
from lookaside.errors import AdapterNotFound, InvalidCheckpoint
from service.registry import AdapterRegistry
from service.store import ACTIVE_FILE, LAST_FILE, AdapterStore, UploadTooLarge
from service.store import layout as layout_module
from tests.unit.service.test_store import edit_manifest, make_upload

_OS_CALLS = (
    "stat",
    "lstat",
    "listdir",
    "scandir",
    "open",
    "replace",
    "rename",
    "mkdir",
    "rmdir",
    "unlink",
    "fsync",
    "chmod",
    "link",
)


@contextmanager
def fs_calls() -> Iterator[Counter[str]]:
    """Count every filesystem call made inside the block (``os.*`` and ``open``), by name.

    pathlib, tempfile, shutil and the atomic writers all go through these module attributes, so
    ``Path.is_file``/``iterdir``/``read_bytes`` and every write are seen."""
    counts: Counter[str] = Counter()

    def counting(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        for name in _OS_CALLS:
            mp.setattr(os, name, counting(getattr(os, name), f"os.{name}"))
        mp.setattr(io, "open", counting(io.open, "io.open"))
        mp.setattr(builtins, "open", counting(builtins.open, "open"))
        yield counts


def write_layout(
    root: Path,
    upload: tuple[bytes, bytes],
    name: str,
    versions: int,
    *,
    active: int | None = 1,
    last: int | None = None,
) -> None:
    """``versions`` complete versions of ``name`` written straight into the store's layout
    (what a store that has run for a while holds), fast: no fsync, weights hard-linked."""
    base = json.loads(upload[0])
    shared = root / ".weights"
    if not shared.exists():
        root.mkdir(parents=True, exist_ok=True)
        shared.write_bytes(upload[1])
    for version in range(1, versions + 1):
        target = root / name / str(version)
        target.mkdir(parents=True)
        manifest = {**base, "name": name, "version": version}
        (target / MANIFEST_FILE).write_text(json.dumps(manifest))
        os.link(shared, target / WEIGHTS_FILE)
    (root / name / LAST_FILE).write_text(f"{last or versions}\n")
    if active is not None:
        (root / name / ACTIVE_FILE).write_text(f"{active}\n")


def open_store(root: Path) -> AdapterStore:
    (root / ".weights").unlink(missing_ok=True)
    return AdapterStore(root)


@pytest.fixture(scope="module")
def upload(tiny_backbone: VisionTransformer) -> tuple[bytes, bytes]:
    return make_upload(tiny_backbone, seed=1)


@pytest.fixture(scope="module")
def new_content(tiny_backbone: VisionTransformer) -> tuple[bytes, bytes]:
    return make_upload(tiny_backbone, seed=2)


def _put_counts(
    store: AdapterStore, data: tuple[bytes, bytes], backbone: VisionTransformer, **kw: Any
) -> Counter[str]:
    with fs_calls() as counts:
        store.put(*data, backbone=backbone, **kw)
    return counts


# -- costs, counted ----------------------------------------------------------------------------


def test_the_counter_sees_pathlib_and_the_atomic_writers(tmp_path: Path) -> None:
    with fs_calls() as counts:
        (tmp_path / "x").is_file()
        list(tmp_path.iterdir())
        layout_module.write_file_atomic(tmp_path / "f", b"1")
    assert counts["os.stat"] >= 1
    assert counts["os.listdir"] + counts["os.scandir"] >= 1
    assert counts["os.fsync"] == 2  # the file and its directory
    assert counts["os.replace"] == 1


def test_an_upload_costs_the_same_at_10_and_300_versions(
    tmp_path: Path,
    tiny_backbone: VisionTransformer,
    upload: tuple[bytes, bytes],
    new_content: tuple[bytes, bytes],
) -> None:
    seen = {}
    for versions in (10, 300):
        write_layout(tmp_path / str(versions), upload, "esc50", versions)
        store = open_store(tmp_path / str(versions))
        seen[versions] = _put_counts(store, new_content, tiny_backbone)
        again = _put_counts(store, new_content, tiny_backbone)  # identical: nothing written
        assert again == Counter(), again
        assert store.versions("esc50")[-1] == versions + 1
    assert seen[10] == seen[300], seen
    # A new version: two atomic writes' worth (version dir + LAST), nothing per stored version.
    assert seen[300]["os.stat"] <= 10, seen[300]
    assert seen[300]["os.fsync"] == 6  # 2 files + temp dir + parent, LAST + its dir
    assert sum(seen[300].values()) < 40, seen[300]


def test_an_upload_costs_the_same_with_1000_names(
    tmp_path: Path,
    tiny_backbone: VisionTransformer,
    upload: tuple[bytes, bytes],
    new_content: tuple[bytes, bytes],
) -> None:
    seen = {}
    for names in (1, 1000):
        root = tmp_path / str(names)
        write_layout(root, upload, "esc50", 3)
        for i in range(1, names):
            write_layout(root, upload, f"n{i:04d}", 1)
        store = open_store(root)
        assert store.name_count() == names
        fresh = edit_manifest(new_content[0], lambda m: m.update(name="brand-new"))
        seen[names] = (
            _put_counts(store, new_content, tiny_backbone, activate=True),
            _put_counts(store, (fresh, new_content[1]), tiny_backbone),
        )
    assert seen[1] == seen[1000], seen


def test_resolve_and_metrics_reads_never_touch_the_disk(
    tmp_path: Path, tiny_backbone: VisionTransformer, upload: tuple[bytes, bytes]
) -> None:
    root = tmp_path / "store"
    write_layout(root, upload, "esc50", 300, active=7)
    for i in range(999):
        write_layout(root, upload, f"n{i:04d}", 1)
    store = open_store(root)
    registry = AdapterRegistry(store, _NoEngine(), backbone=tiny_backbone, resident_limit=2)
    with fs_calls() as counts:
        assert registry.resolve("esc50") == ("esc50", 7)
        assert registry.resolve("esc50@300") == ("esc50", 300)
        assert registry.resolve("n0500") == ("n0500", 1)
        with pytest.raises(AdapterNotFound):
            registry.resolve("esc50@301")
        with pytest.raises(AdapterNotFound):
            registry.resolve("nope")
        assert store.name_count() == 1000  # what /metrics reads
        assert len(store.names()) == 1000
        assert store.page(None, 100)[0][0] == "esc50"
        assert store.manifest("esc50", 250).version == 250
        assert len(registry.status("esc50")) == 300
        store.describe("esc5")
    assert counts == Counter(), counts
    registry.close()


class _NoEngine:
    """An engine the test never loads into (resolve must not need one)."""

    def load_adapter(
        self, checkpoint: AdapterCheckpoint, *, validated: bool = False
    ) -> Future[None]:
        raise AssertionError("no load expected")

    def unload_adapter(self, adapter_id: str) -> Future[None]:
        raise AssertionError("no unload expected")


# -- startup repair and the crash state ----------------------------------------------------------


@pytest.mark.parametrize("pointer", [None, "9\n", "x\n", ""])
def test_a_name_without_a_valid_active_version_is_repaired_at_startup(
    pointer: str | None,
    tmp_path: Path,
    upload: tuple[bytes, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A crash between a version's rename and its ACTIVE write (or a pointer edited by hand)."""
    root = tmp_path / "store"
    write_layout(root, upload, "esc50", 2, active=None)
    write_layout(root, upload, "ok", 2, active=1)
    (root / "esc50" / LAST_FILE).unlink()  # the crash came before LAST, too
    if pointer is not None:
        (root / "esc50" / ACTIVE_FILE).write_text(pointer)
    store = open_store(root)
    assert (store.versions("esc50"), store.active("esc50")) == ([1, 2], None)
    with caplog.at_level(logging.WARNING, logger="service.store"):
        store.cleanup()
    assert store.active("esc50") == 2  # the newest complete version
    assert (root / "esc50" / ACTIVE_FILE).read_text().strip() == "2"
    assert store.active("ok") == 1  # a valid pointer is left alone
    assert [r.getMessage() for r in caplog.records if "esc50" in r.getMessage()] == [
        "adapter 'esc50' had versions 1, 2 (none active) but no valid active version (a write "
        "was interrupted before its ACTIVE pointer); made esc50@2 active"
    ]
    assert AdapterStore(root).active("esc50") == 2  # durable


def test_retrying_the_identical_upload_with_activate_makes_it_active(
    tmp_path: Path, tiny_backbone: VisionTransformer, upload: tuple[bytes, bytes]
) -> None:
    """The crash state, not yet repaired: the retry of the same upload is what fixes it."""
    store = AdapterStore(tmp_path / "store")
    first = store.put(*upload, backbone=tiny_backbone)
    (store.root / "esc50" / ACTIVE_FILE).unlink()
    (store.root / "esc50" / LAST_FILE).unlink()
    store = AdapterStore(store.root)
    assert store.active("esc50") is None
    plain = store.put(*upload, backbone=tiny_backbone)
    assert (plain.version, plain.created, plain.active) == (1, False, False)
    again = store.put(*upload, backbone=tiny_backbone, activate=True)
    assert (again.version, again.created, again.active) == (1, False, True)
    assert again.manifest == first.manifest
    assert store.active("esc50") == 1
    assert AdapterStore(store.root).active("esc50") == 1


# -- the index stays the disk's ---------------------------------------------------------------


def _snapshot(store: AdapterStore) -> dict[str, tuple[list[int], int | None, int, list[Any]]]:
    out = {}
    for name in store.names():
        entry = store.get(name)
        assert entry is not None
        manifests = [s.manifest for s in entry.versions.values()]
        out[name] = (list(entry.versions), entry.active, entry.last, manifests)
    return out


def test_every_mutation_keeps_the_index_equal_to_a_fresh_scan(
    tmp_path: Path, tiny_backbone: VisionTransformer
) -> None:
    store = AdapterStore(tmp_path / "store")
    uploads = [make_upload(tiny_backbone, seed=s) for s in range(4)]
    steps: list[Callable[[], object]] = [
        lambda: store.put(*uploads[0], backbone=tiny_backbone),
        lambda: store.put(*uploads[1], backbone=tiny_backbone),
        lambda: store.put(*uploads[2], backbone=tiny_backbone, activate=True),
        lambda: store.put(*uploads[1], backbone=tiny_backbone, activate=True),  # identical
        lambda: store.activate("esc50", 1),
        lambda: store.put(*make_upload(tiny_backbone, "other", seed=9), backbone=tiny_backbone),
        lambda: store.delete_version("esc50", 2),
        lambda: store.delete_version("esc50", 1, force=True),
        lambda: store.put(*uploads[3], backbone=tiny_backbone),
        lambda: store.delete("other"),
        lambda: store.delete_version("esc50", 3, force=True),
    ]
    for step in steps:
        step()
        assert _snapshot(store) == _snapshot(AdapterStore(store.root))
    assert store.names() == ["esc50"]
    assert (store.versions("esc50"), store.active("esc50")) == ([4], 4)


def test_a_failed_write_leaves_the_index_as_the_disk_is(
    tmp_path: Path,
    tiny_backbone: VisionTransformer,
    upload: tuple[bytes, bytes],
    new_content: tuple[bytes, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = AdapterStore(tmp_path / "store")
    store.put(*upload, backbone=tiny_backbone)
    real = layout_module.write_file_atomic

    def no_space(path: Path, data: bytes, **kw: Any) -> None:
        if path.name == LAST_FILE:
            raise OSError(28, "No space left on device")
        real(path, data, **kw)

    monkeypatch.setattr(layout_module, "write_file_atomic", no_space)
    with pytest.raises(OSError, match="No space"):
        store.put(*new_content, backbone=tiny_backbone)
    # The version dir was renamed in before LAST failed: the disk has it, so the index has it.
    assert _snapshot(store) == _snapshot(AdapterStore(store.root))
    assert store.versions("esc50") == [1, 2]


def test_limits_given_are_the_ones_used(
    tmp_path: Path, tiny_backbone: VisionTransformer, upload: tuple[bytes, bytes]
) -> None:
    limits = CheckpointLimits(max_weights_bytes=len(upload[1]) - 1, max_labels=10)
    store = AdapterStore(tmp_path / "store", max_weights_bytes=10**9, limits=limits)
    assert store.limits is limits
    assert (store.max_weights_bytes, store.max_manifest_bytes) == (
        len(upload[1]) - 1,
        limits.max_manifest_bytes,
    )
    with pytest.raises(UploadTooLarge, match=f"limit of {len(upload[1]) - 1} bytes"):
        store.put(*upload, backbone=tiny_backbone)
    labels = edit_manifest(upload[0], lambda m: m.update(labels=[f"c{i}" for i in range(11)]))
    roomy = AdapterStore(tmp_path / "s2", limits=CheckpointLimits(max_labels=2))
    with pytest.raises(InvalidCheckpoint, match="max_labels"):
        roomy.put(labels, upload[1], backbone=tiny_backbone)
    assert roomy.names() == []


def test_an_unparsable_stored_manifest_is_listed_and_refused_when_read(
    tmp_path: Path, upload: tuple[bytes, bytes]
) -> None:
    root = tmp_path / "store"
    write_layout(root, upload, "esc50", 2)
    (root / "esc50" / "2" / MANIFEST_FILE).write_text("{edited by hand")
    store = open_store(root)
    assert store.versions("esc50") == [1, 2]
    with pytest.raises(InvalidCheckpoint, match="not valid JSON"):
        store.manifest("esc50", 2)
    assert store.manifest("esc50", 1).version == 1


# -- bounded messages and pages -----------------------------------------------------------------


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory, upload: tuple[bytes, bytes]) -> Path:
    root = tmp_path_factory.mktemp("big") / "store"
    write_layout(root, upload, "esc50", 1)
    for i in range(999):
        write_layout(root, upload, f"adapter-{i:03d}", 1)
    (root / ".weights").unlink()
    return root


def test_no_such_adapter_names_a_few_close_matches_and_the_count(big_store: Path) -> None:
    store = AdapterStore(big_store)
    for asked, expected in (("esc5", "esc50"), ("xsc50", "esc50"), ("adapter-1234", "adapter-123")):
        message = store.describe(asked)
        assert message.startswith(f"no adapter named {asked!r}; 1000 adapters in the store")
        listed = message.split("similar names: ")[1].split(" (GET")[0].split(", ")
        assert expected in listed
        assert 1 <= len(listed) <= 5
        assert len(message) < 400, message
    assert "no similar name" in store.describe("zzzzzzzzzzzz")
    long = store.describe("q" * 5000)
    assert len(long) < 400
    assert "5000 characters" in long
    # A tiny store still lists every name (that is at most a few).
    small = AdapterStore(big_store.parent / "small")
    assert small.describe("x").endswith(
        "adapters in the store: none (upload one with POST /adapters)"
    )


def test_pages_walk_every_name_exactly_once(big_store: Path) -> None:
    store = AdapterStore(big_store)
    seen: list[str] = []
    after: str | None = None
    while True:
        names, more = store.page(after, 64)
        assert 0 < len(names) <= 64
        seen += names
        if not more:
            break
        after = names[-1]
    assert len(seen) == 1000
    assert seen == sorted(set(seen)) == store.names()
    assert store.page("zzz", 10) == ([], False)


def test_pages_survive_names_coming_and_going_between_them(
    tmp_path: Path, tiny_backbone: VisionTransformer, upload: tuple[bytes, bytes]
) -> None:
    root = tmp_path / "store"
    for i in range(20):
        write_layout(root, upload, f"n{i:02d}", 1)
    store = open_store(root)
    first, more = store.page(None, 8)
    assert (first, more) == ([f"n{i:02d}" for i in range(8)], True)
    store.delete("n07")  # the cursor's own name goes
    store.delete("n12")  # a name not reached yet goes
    new = edit_manifest(upload[0], lambda m: m.update(name="a-new"))  # sorts before the cursor
    store.put(new, upload[1], backbone=tiny_backbone)
    rest: list[str] = []
    after: str | None = first[-1]
    while after is not None:
        names, more = store.page(after, 8)
        rest += names
        after = names[-1] if more else None
    assert first + rest == [f"n{i:02d}" for i in range(20) if i != 12]
