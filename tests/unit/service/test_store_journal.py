"""The shared store: two AdapterStore objects on one directory (two processes' views) see each
other's writes through the change journal, within one watcher poll; the journal stays bounded;
the store-wide lock is exclusive across open files and its wait is bounded."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import pytest

from service.errors import StoreBusy
from service.store import AdapterStore
from service.store.journal import LOCK_FILE, ChangeJournal, StoreWatcher
from tests.integration.service.svc_support import checkpoint_bytes, make_checkpoint, tiny


def _put(store: AdapterStore, name: str, seed: int, *, activate: bool = False) -> int:
    manifest, weights = checkpoint_bytes(make_checkpoint(tiny(), name, seed=seed))
    return store.put(manifest, weights, backbone=tiny(), activate=activate).version


def test_journal_window_and_rescan_signal(tmp_path: Path) -> None:
    journal = ChangeJournal(tmp_path, max_entries=4)
    assert journal.changed_since(0) == (0, [])
    with journal.locked():
        for name in ["a", "b", "a", "c"]:
            journal.record(name)
    assert journal.changed_since(0) == (4, ["a", "b", "c"])
    assert journal.changed_since(2) == (4, ["a", "c"])
    assert journal.changed_since(4) == (4, [])
    with journal.locked():
        journal.record("d")
        journal.record("e")
    assert len(journal.read()) == 4  # bounded
    assert journal.changed_since(1) == (6, None)  # gen 2 fell out of the window: rescan
    assert journal.changed_since(2) == (6, ["a", "c", "d", "e"])


def test_a_second_view_sees_uploads_activations_and_deletes(tmp_path: Path) -> None:
    writer = AdapterStore(tmp_path, shared=True)
    reader = AdapterStore(tmp_path, shared=True)
    changed: list[list[str]] = []
    watcher = StoreWatcher(reader, interval_s=60.0, on_change=changed.append)  # polled by hand
    assert watcher.poll() == []

    _put(writer, "kws", seed=1)
    assert reader.versions("kws") == []  # not yet seen
    assert watcher.poll() == ["kws"]
    assert reader.versions("kws") == [1]
    assert reader.active("kws") == 1

    _put(writer, "kws", seed=2)
    writer.activate("kws", 2)
    assert watcher.poll() == ["kws"]
    assert (reader.versions("kws"), reader.active("kws")) == ([1, 2], 2)

    writer.delete_version("kws", 1)
    _put(writer, "esc", seed=3)
    assert sorted(watcher.poll()) == ["esc", "kws"]
    assert reader.versions("kws") == [2]
    assert reader.names() == ["esc", "kws"]

    polls, reads = watcher.polls, watcher.reads
    assert watcher.poll() == []  # nothing changed: one stat, no read
    assert (watcher.polls, watcher.reads) == (polls + 1, reads)
    assert changed == [["kws"], ["kws"], ["kws", "esc"]]


def test_writes_from_two_views_never_reuse_a_version(tmp_path: Path) -> None:
    """Each write re-reads its name under the store-wide lock: a stale view still assigns the
    next version, never one the other view wrote."""
    a = AdapterStore(tmp_path, shared=True)
    b = AdapterStore(tmp_path, shared=True)
    assert _put(a, "x", seed=1) == 1
    assert _put(b, "x", seed=2) == 2  # b had never seen version 1
    assert _put(a, "x", seed=3) == 3
    assert sorted(int(p.name) for p in (tmp_path / "x").iterdir() if p.name.isdigit()) == [1, 2, 3]


def test_watcher_thread_applies_changes_within_its_interval(tmp_path: Path) -> None:
    writer = AdapterStore(tmp_path, shared=True)
    reader = AdapterStore(tmp_path, shared=True)
    seen = threading.Event()
    watcher = StoreWatcher(reader, interval_s=0.05, on_change=lambda names: seen.set()).start()
    try:
        _put(writer, "live", seed=4)
        assert seen.wait(10.0)
        assert reader.active("live") == 1
    finally:
        watcher.stop()


def test_a_reader_far_behind_rescans(tmp_path: Path) -> None:
    writer = AdapterStore(tmp_path, shared=True)
    reader = AdapterStore(tmp_path, shared=True)
    watcher = StoreWatcher(reader, interval_s=60.0)
    writer.journal = ChangeJournal(tmp_path, max_entries=2)
    for i, name in enumerate(["p", "q", "r"]):
        _put(writer, name, seed=10 + i)
    assert sorted(watcher.poll()) == ["p", "q", "r"]  # the journal holds 2: a full rescan
    assert reader.names() == ["p", "q", "r"]


def test_lock_is_exclusive_and_its_wait_bounded(tmp_path: Path) -> None:
    journal = ChangeJournal(tmp_path)
    with journal.locked():
        pass  # creates the lock file
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process's writer, in effect
        with pytest.raises(StoreBusy, match="write lock"), journal.locked(timeout_s=0.2):
            pass
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    with journal.locked(timeout_s=0.2):
        pass


def test_one_process_store_writes_no_journal(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    _put(store, "solo", seed=5)
    assert store.journal is None
    assert not (tmp_path / ".journal").exists()
    with pytest.raises(ValueError, match="shared store"):
        StoreWatcher(store, interval_s=1.0)
