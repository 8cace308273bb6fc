"""Crash-safe writes: temp sibling, fsync, rename (docs/design.md §4).

A reader sees the old content or the new one, never half of either: everything is written and
fsynced under a hidden temporary name beside the target, renamed into place, and the parent
directory is fsynced so the rename itself survives a power cut. Temporaries are named
``.<target name>.tmp-<random>`` so :func:`remove_stale_temps` can find what a crash left behind.
Used by :meth:`AdapterCheckpoint.save` and by the service's adapter store (version directories
and the ``ACTIVE`` pointer).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from lookaside.errors import ConfigError

__all__ = ["remove_stale_temps", "write_dir_atomic", "write_file_atomic"]

_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-[0-9a-z_]+")
"""``.<name>.tmp-<random>``: a write in progress; ``.<name>.old-<random>``: a replaced dir."""


def write_dir_atomic(
    target: Path, files: Mapping[str, bytes], *, overwrite: bool = False, mode: int = 0o755
) -> None:
    """Create directory ``target`` holding exactly ``files`` (name -> bytes), atomically.

    Readers see the whole directory or nothing. An existing empty directory is replaced; a
    non-empty one only with ``overwrite=True`` (moved aside, the new one renamed in, the old one
    deleted; restored if the second rename fails: between the two renames ``target`` is briefly
    absent, never half-written, and :func:`remove_stale_temps` restores it after a crash there).

    Raises:
        FileExistsError: ``target`` is a file, or a non-empty directory and ``overwrite`` is off.
        ConfigError: a file name is not a plain name (empty, ``.``/``..``, or has a separator).
    """
    target = Path(target)
    for name in files:
        if not name or name in {".", ".."} or "/" in name or os.sep in name or "\0" in name:
            raise ConfigError(f"file name {name!r} must be a plain name without separators")
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory")
    occupied = target.is_dir() and any(target.iterdir())
    if occupied and not overwrite:
        raise FileExistsError(f"{target} already holds files; pass overwrite=True to replace")
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    try:
        os.chmod(tmp, mode)  # mkdtemp makes 0700; the serving user must read it
        for name, data in files.items():
            _write_synced(tmp / name, data)
        fsync_dir(tmp)
        if occupied:
            _swap_in(tmp, target)
        else:
            os.replace(tmp, target)  # also replaces an existing empty directory
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_file_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace file ``path`` by ``data`` atomically (e.g. the store's ``ACTIVE`` pointer).

    Written to a temporary sibling, fsynced, renamed over ``path``, and the parent fsynced:
    readers see the old content or the new, and the new survives a crash once this returns.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temps(parent: Path, *, min_age_s: float = 0.0) -> list[Path]:
    """Clean up what interrupted atomic writes left in ``parent``; returns the paths handled.

    ``.<name>.tmp-*`` files and directories (writes that never finished) are deleted. A
    ``.<name>.old-*`` directory (an overwrite interrupted between its two renames) is renamed
    back to ``<name>`` when ``<name>`` is missing, and deleted otherwise. Only entries older than
    ``min_age_s`` are touched, so a caller that cannot exclude concurrent writers (call it at
    startup, or under the writers' lock) can still leave fresh temporaries alone.
    """
    parent = Path(parent)
    handled: list[Path] = []
    if not parent.is_dir():
        return handled
    now = time.time()
    for entry in sorted(parent.iterdir()):
        match = _TEMP.fullmatch(entry.name)
        if match is None:
            continue
        try:
            if min_age_s > 0 and now - entry.lstat().st_mtime < min_age_s:
                continue
        except FileNotFoundError:
            continue
        original = parent / match["name"]
        if match["kind"] == "old" and entry.is_dir() and not original.exists():
            os.replace(entry, original)  # the new version never arrived: keep the old one
            fsync_dir(parent)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        handled.append(entry)
    return handled


def fsync_dir(path: Path) -> None:
    """Make a rename/creation in ``path`` durable (POSIX: fsync the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _swap_in(new: Path, target: Path) -> None:
    """Replace the non-empty directory ``target`` by ``new``; restore the old one on failure.

    POSIX cannot rename over a non-empty directory, so the old one is moved aside first.
    """
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
