"""Graphs on disk, keyed by :func:`lookaside.onnx.export.graph_key`: a restart reuses them.

Each graph is ``<key>.onnx`` beside ``<key>.json`` (what it is, its size and SHA-256). A file is
used only when its record is readable and its bytes hash to the recorded digest; anything else
(a torn write, a flipped byte, a record from another build) is deleted and rebuilt, never
trusted. Files are written to a temporary name and renamed into place, the record last, so a
crash leaves either a complete pair or one that fails the check. Concurrent builders of one key
(two processes sharing the directory) each write their own temporary file; the last rename wins
and both results are equal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from lookaside.onnx.export import GraphSpec

__all__ = ["GraphCache"]

log = logging.getLogger("lookaside.onnx")
_CHUNK = 1 << 20


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class GraphCache:
    """A directory of built graphs. Thread-safe for distinct keys; the runner builds one key at
    a time."""

    def __init__(self, root: Path, *, max_graphs: int = 16) -> None:
        self.root = Path(root)
        self.max_graphs = max_graphs
        """Graph files kept (each is up to the backbone's size: 350 MB for ViT-B in fp32); past it
        the least recently used are deleted after a build."""
        self.builds = 0
        """Graphs built by this process (tests count exports with it)."""
        self.reused = 0
        """Graphs found valid on disk."""

    def path(self, key: str) -> Path:
        return self.root / f"{key}.onnx"

    def _record(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def valid(self, key: str) -> bool:
        """True when ``key``'s file is complete and matches its record."""
        try:
            record = json.loads(self._record(key).read_text())
            path = self.path(key)
            return bool(
                path.stat().st_size == record["bytes"] and _sha256(path) == record["sha256"]
            )
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def get_or_build(self, key: str, spec: GraphSpec, build: Callable[[Path], object]) -> Path:
        """The path of ``key``'s graph, built with ``build(tmp_path)`` unless a valid one is on
        disk. A present but invalid pair is removed first (logged)."""
        if self.valid(key):
            self.reused += 1
            os.utime(self._record(key))  # recently used: pruned last
            return self.path(key)
        self.discard(key)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{os.getpid()}.{time.monotonic_ns()}.onnx"
        try:
            build(tmp)
            record = {
                "spec": asdict(spec),
                "bytes": tmp.stat().st_size,
                "sha256": _sha256(tmp),
                "created": time.time(),
            }
            os.replace(tmp, self.path(key))
            rec_tmp = tmp.with_suffix(".json")
            rec_tmp.write_text(json.dumps(record, indent=1))
            os.replace(rec_tmp, self._record(key))
        finally:
            tmp.unlink(missing_ok=True)
        self.builds += 1
        self.prune(keep=key)
        return self.path(key)

    def prune(self, keep: str) -> None:
        """Delete the least recently used graphs past :attr:`max_graphs` (never ``keep``), and
        temporary files a crashed build left behind more than an hour ago. A session that has a
        deleted file open keeps working: it read the file when it opened."""
        records = [r for r in self.root.glob("*.json") if not r.name.startswith(".")]
        records.sort(key=_mtime, reverse=True)
        for record in [r for r in records if r.stem != keep][max(self.max_graphs - 1, 0) :]:
            self.path(record.stem).unlink(missing_ok=True)
            record.unlink(missing_ok=True)
        stale = time.time() - 3600
        for tmp in self.root.glob(".*.onnx"):
            if _mtime(tmp) < stale:
                tmp.unlink(missing_ok=True)

    def discard(self, key: str) -> None:
        """Remove ``key``'s files (a corrupt or unloadable graph)."""
        present = [p for p in (self.path(key), self._record(key)) if p.exists()]
        for p in present:
            p.unlink(missing_ok=True)
        if present:
            log.warning("discarded the cached graph %s (incomplete or corrupt); rebuilding", key)
