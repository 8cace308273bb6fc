"""Atomic writes: readers see all or nothing, failures leave the target as it was, crashes are
cleaned up (lookaside.checkpoint.atomic, reused by the service's store)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from lookaside.checkpoint import atomic
from lookaside.checkpoint.atomic import remove_stale_temps, write_dir_atomic, write_file_atomic


def _listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def _crash_on(monkeypatch: pytest.MonkeyPatch, call: int) -> list[Any]:
    """Make the ``call``-th os.replace raise, as a crash at that rename would."""
    real = os.replace
    calls: list[Any] = []

    def replace(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == call:
            raise OSError("simulated crash")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


# -- write_dir_atomic ------------------------------------------------------------------------


def test_write_dir_creates_exactly_the_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "1"
    write_dir_atomic(target, {"x.bin": b"\x00\x01", "m.json": b"{}"})
    assert _listing(target) == ["m.json", "x.bin"]
    assert (target / "x.bin").read_bytes() == b"\x00\x01"
    assert _listing(target.parent) == ["1"]  # no temp dir left
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # readable by a serving user


def test_write_dir_refuses_a_non_empty_target_unless_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "v"
    write_dir_atomic(target, {"f": b"old"})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_dir_atomic(target, {"f": b"new"})
    assert (target / "f").read_bytes() == b"old"
    write_dir_atomic(target, {"g": b"new"}, overwrite=True)
    assert _listing(target) == ["g"]  # replaced, not merged
    assert _listing(tmp_path) == ["v"]
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not a directory"):
        write_dir_atomic(tmp_path / "file", {"f": b""})


def test_write_dir_replaces_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    write_dir_atomic(tmp_path / "v", {"f": b"1"})
    assert (tmp_path / "v" / "f").read_bytes() == b"1"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x"])
def test_write_dir_refuses_names_that_are_not_plain(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain name"):
        write_dir_atomic(tmp_path / "v", {name: b"x"})
    assert _listing(tmp_path) == []


def test_failed_write_leaves_no_target_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: Path, data: bytes) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic, "_write_synced", broken)
    with pytest.raises(OSError, match="disk full"):
        write_dir_atomic(tmp_path / "v", {"f": b"x"})
    assert _listing(tmp_path) == []


def test_failed_overwrite_leaves_the_old_directory_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "v"
    write_dir_atomic(target, {"f": b"old"})
    _crash_on(monkeypatch, 2)  # old moved aside, then the new one's rename fails
    with pytest.raises(OSError, match="simulated crash"):
        write_dir_atomic(target, {"f": b"new"}, overwrite=True)
    monkeypatch.undo()
    assert (target / "f").read_bytes() == b"old"
    assert _listing(tmp_path) == ["v"]


# -- write_file_atomic -----------------------------------------------------------------------


def test_write_file_replaces_content(tmp_path: Path) -> None:
    pointer = tmp_path / "esc50" / "ACTIVE"
    write_file_atomic(pointer, b"1\n")
    write_file_atomic(pointer, b"2\n")
    assert pointer.read_bytes() == b"2\n"
    assert _listing(pointer.parent) == ["ACTIVE"]
    assert stat.S_IMODE(pointer.stat().st_mode) == 0o644


def test_failed_file_write_leaves_the_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pointer = tmp_path / "ACTIVE"
    write_file_atomic(pointer, b"1\n")
    _crash_on(monkeypatch, 1)
    with pytest.raises(OSError, match="simulated crash"):
        write_file_atomic(pointer, b"2\n")
    monkeypatch.undo()
    assert pointer.read_bytes() == b"1\n"
    assert _listing(tmp_path) == ["ACTIVE"]  # the temp file is gone


# -- remove_stale_temps ----------------------------------------------------------------------


def test_stale_temps_are_removed_and_others_kept(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / ".1.tmp-abc123").mkdir()  # a crashed write_dir_atomic
    (tmp_path / ".1.tmp-abc123" / "adapter.safetensors").write_bytes(b"half")
    (tmp_path / ".ACTIVE.tmp-x_9").write_bytes(b"2")  # a crashed write_file_atomic
    (tmp_path / ".hidden").write_bytes(b"keep")
    (tmp_path / "ACTIVE").write_bytes(b"1")
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == [".1.tmp-abc123", ".ACTIVE.tmp-x_9"]
    assert _listing(tmp_path) == [".hidden", "1", "ACTIVE"]
    assert remove_stale_temps(tmp_path) == []
    assert remove_stale_temps(tmp_path / "missing") == []


def test_an_interrupted_overwrite_is_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the two renames of an overwrite (simulated: the restore also fails)
    leaves the old version aside; cleanup puts it back instead of deleting it."""
    target = tmp_path / "v"
    write_dir_atomic(target, {"f": b"old"})
    real = os.replace
    calls: list[Any] = []

    def crash_and_no_restore(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) >= 2:
            raise OSError("power cut")
        real(src, dst)

    monkeypatch.setattr(os, "replace", crash_and_no_restore)
    with pytest.raises(OSError, match="power cut"):
        write_dir_atomic(target, {"f": b"new"}, overwrite=True)
    monkeypatch.undo()
    assert not target.exists()
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith(".v.old-")]
    assert remove_stale_temps(tmp_path) == [aside]
    assert (target / "f").read_bytes() == b"old"
    assert _listing(tmp_path) == ["v"]


def test_an_old_copy_beside_its_replacement_is_removed(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / ".v.old-1234abcd").mkdir()
    assert [p.name for p in remove_stale_temps(tmp_path)] == [".v.old-1234abcd"]
    assert _listing(tmp_path) == ["v"]


def test_fresh_temps_are_kept_when_asked(tmp_path: Path) -> None:
    (tmp_path / ".v.tmp-new").mkdir()
    assert remove_stale_temps(tmp_path, min_age_s=3600) == []
    old = tmp_path / ".w.tmp-old"
    old.mkdir()
    os.utime(old, (1, 1))
    assert remove_stale_temps(tmp_path, min_age_s=3600) == [old]
    assert _listing(tmp_path) == [".v.tmp-new"]
