"""The adapter store on disk: its layout, pointer files, atomic version directories and scans.

Layout (Triton's model repository, with a pointer per name)::

    <root>/<name>/<version>/manifest.json      the manifest, its ``version`` set by the store
    <root>/<name>/<version>/adapter.safetensors the uploaded weights, byte for byte
    <root>/<name>/ACTIVE                        text: the active version of ``name``
    <root>/<name>/LAST                          text: the highest version ever assigned to ``name``

A version directory is written whole by :func:`write_dir_atomic` (temp sibling, fsync, rename)
and counts once it holds ``manifest.json``; pointers are written by :func:`write_file_atomic`;
a directory is removed by renaming it aside first (:func:`remove_tree_atomic`), so a crash never
leaves half a version visible. :func:`scan_name` reads one name back as the index holds it.

Threads: called by :class:`~service.store.AdapterStore` under its write lock (writes, scans at
open, startup repair and after a failed write); nothing here keeps state.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

from lookaside.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, AdapterManifest, load_manifest
from lookaside.checkpoint.atomic import fsync_dir, write_dir_atomic, write_file_atomic
from lookaside.errors import InvalidCheckpoint
from service.store.index import StoredAdapter, StoredVersion

__all__ = [
    "ACTIVE_FILE",
    "LAST_FILE",
    "NAME_PATTERN",
    "NAME_RULE",
    "read_last",
    "remove_tree_atomic",
    "scan_name",
    "write_pointer",
    "write_version",
]

ACTIVE_FILE = "ACTIVE"
LAST_FILE = "LAST"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
"""Adapter names: what :class:`AdapterManifest` accepts; no dots or slashes, so no traversal."""
NAME_RULE = "names are 1-64 lower-case letters, digits, '-' or '_'"


def write_version(name_dir: Path, manifest: AdapterManifest, weights: bytes) -> None:
    """``name_dir/<manifest.version>`` with the manifest (as :meth:`AdapterCheckpoint.save`
    writes it: sorted keys, no NaN) and the weights byte for byte, renamed in whole."""
    text = json.dumps(manifest.model_dump(mode="json"), sort_keys=True, indent=2, allow_nan=False)
    name_dir.mkdir(exist_ok=True)
    write_dir_atomic(
        name_dir / str(manifest.version),
        {MANIFEST_FILE: (text + "\n").encode("utf-8"), WEIGHTS_FILE: weights},
    )


def write_pointer(name_dir: Path, pointer: str, version: int) -> None:
    """``ACTIVE`` or ``LAST`` of a name set to ``version``, atomically."""
    write_file_atomic(name_dir / pointer, f"{version}\n".encode("ascii"))


def read_number(path: Path) -> int | None:
    """The decimal number a pointer file holds, or None (missing, unreadable, not a number)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def read_last(name_dir: Path) -> int:
    """The highest version ever assigned to the name in ``name_dir`` (0: none)."""
    return read_number(name_dir / LAST_FILE) or 0


def remove_tree_atomic(path: Path) -> None:
    """Rename ``path`` to a temp name (one atomic step readers see), then delete it."""
    aside = path.with_name(f".{path.name}.tmp-del_{uuid.uuid4().hex[:8]}")
    os.replace(path, aside)
    fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)


def scan_name(name_dir: Path, *, max_manifest_bytes: int) -> StoredAdapter | None:
    """One name as the disk has it: complete versions (parsed), ACTIVE, LAST; None when it has
    no complete version. A manifest that does not parse is kept with its problem."""
    try:
        entries = list(name_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return None
    versions: dict[int, StoredVersion] = {}
    for path in entries:
        if not (path.name.isdigit() and not path.name.startswith("0")):
            continue
        if not (path / MANIFEST_FILE).is_file():
            continue  # not a complete version (it is renamed in whole)
        number = int(path.name)
        try:
            manifest = load_manifest(path, max_bytes=max_manifest_bytes)
        except InvalidCheckpoint as exc:
            versions[number] = StoredVersion(number, None, str(exc))
        else:
            versions[number] = StoredVersion.parsed(number, manifest)
    if not versions:
        return None
    return StoredAdapter.of(
        name_dir.name, versions, read_number(name_dir / ACTIVE_FILE), read_last(name_dir)
    )
