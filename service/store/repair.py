"""Startup repair of the adapter store: what a crash can leave behind, put right before serving.

A crash can leave temp leftovers (``.<x>.tmp-*``: a version or pointer being written, a version
renamed aside for deletion or replacement), a name directory without any complete version, and
a name with versions but no valid ``ACTIVE`` (a crash between a first version's rename and its
pointer write). :func:`repair_store` removes the first two and gives the third its newest
complete version as active, logged as a warning; the index follows the disk.

Threads: run by :meth:`service.store.AdapterStore.cleanup` under the store's write lock, on the
thread that opens the store (the server's startup, before it serves).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from lookaside.checkpoint.atomic import remove_stale_temps
from service.store.index import StoredAdapter, StoreIndex, format_versions
from service.store.layout import ACTIVE_FILE, NAME_PATTERN, write_pointer

__all__ = ["repair_store"]

log = logging.getLogger("service.store")  # the store's log: one name for its warnings

Resync = Callable[[str], StoredAdapter | None]
"""Re-reads one name from disk into the index (None: the name has no complete version)."""


def repair_store(root: Path, index: StoreIndex, resync: Resync) -> list[Path]:
    """Remove temp leftovers and names without any version under ``root``; make the newest
    complete version active where a name has no valid pointer. Returns the paths removed."""
    removed = remove_stale_temps(root)
    for name_dir in sorted(root.iterdir()):
        if not (name_dir.is_dir() and NAME_PATTERN.fullmatch(name_dir.name)):
            continue
        handled = remove_stale_temps(name_dir)
        removed += handled
        name = name_dir.name
        entry = index.get(name)
        if entry is None or any(".old-" in p.name for p in handled):
            entry = resync(name)  # the disk is the truth: look again
        if entry is None:
            shutil.rmtree(name_dir, ignore_errors=True)
            removed.append(name_dir)
        elif entry.active is None:
            _repair_active(root, index, resync, entry)
    return removed


def _repair_active(root: Path, index: StoreIndex, resync: Resync, entry: StoredAdapter) -> None:
    """Make the newest complete version of a name without a valid pointer active."""
    readable = [v for v, s in entry.versions.items() if s.manifest is not None]
    version = (readable or list(entry.versions))[-1]
    try:
        write_pointer(root / entry.name, ACTIVE_FILE, version)
    except BaseException:
        resync(entry.name)
        raise
    index.publish(entry.name, entry.with_active(version))
    log.warning(
        "adapter %r had versions %s but no valid active version (a write was interrupted "
        "before its ACTIVE pointer); made %s@%d active",
        entry.name,
        format_versions(list(entry.versions), None),
        entry.name,
        version,
    )
