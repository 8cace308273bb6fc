"""The adapter store: versioned adapter checkpoints on disk, written atomically, read from an index.

Layout: ``<root>/<name>/<version>/`` (``manifest.json`` + ``adapter.safetensors``) and the
pointers ``<root>/<name>/ACTIVE`` and ``LAST`` (:mod:`service.store.layout`, Triton's model
repository with a pointer per name). :class:`AdapterStore` is the facade the registry, the routes
and the tests use; the in-memory index lives in :mod:`service.store.index`.

Versions are integers the store assigns on upload: one more than the highest ever assigned to
that name (``LAST``), so a deleted version's number is never reused while the name exists (caches
keyed by ``name@version`` cannot serve a deleted version's results for a new upload). Deleting a
whole name forgets its history: a later upload of that name starts again at 1.

The first version of a name becomes active at once (there is nothing to disrupt); later versions
only when asked (``activate=True`` or :meth:`AdapterStore.activate`). Re-uploading identical
content (same weights sha256, same manifest apart from ``version`` and ``created``) returns the
existing version with ``created=False``, and makes it active when ``activate=True``.

Index (:mod:`service.store.index`): the disk is the truth, but nothing reads it to answer a
question. One scan when the store is opened builds it; every mutation changes the disk first
where readers could otherwise see a version that is not there (upload, activate) and the index
first where they could resolve one that is going away (deletes), both under the store's lock, and
re-reads that one name from disk if a write fails. So a lookup (``names``, ``versions``,
``active``, ``manifest``, ``describe``, a page of names) never touches the disk, and an upload
costs the same whatever the number of versions or names (one dict lookup finds identical
content). :meth:`AdapterStore.load` reads and validates weights from disk.

Durability (:mod:`service.store.layout`): a version directory is renamed in whole, then ``LAST``
and ``ACTIVE`` are written atomically, so a crash leaves either the whole version or nothing
visible, and an acknowledged upload survives a restart; deletions rename aside first. Temp
leftovers (``.<x>.tmp-*``) are invisible to every read and removed by :meth:`cleanup`
(:mod:`service.store.repair`), which also repairs a name left with versions but no valid
``ACTIVE`` (a crash between a first version's rename and its pointer write): its newest complete
version becomes active, logged as a warning.

Shared (``shared=True``, every process of a Ray Serve deployment): each mutation also holds the
store-wide file lock, re-reads its name from disk first and is journalled, and a
:class:`~service.store.journal.StoreWatcher` keeps each process's index current with the others'.

Everything an upload brings is validated by :mod:`lookaside.checkpoint` (schema, name, backbone
fingerprint, size, sha256, safetensors header names/shapes/dtypes, finite values) before anything
on disk changes; a refused upload leaves the store exactly as it was.

Thread-safety: one lock serialises every mutation (so concurrent uploads of one name get distinct
versions); validation of an upload runs outside it. A second lock guards only the in-memory index
and is never held during I/O, so a read (from the event loop, a metrics scrape, a request) waits
at most for a dict update, never for a write's fsync. Each name's index entry is immutable and
replaced whole, so what a read returns is one consistent state of that name.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import (
    AdapterManifest,
    CheckpointLimits,
    ValidatedCheckpoint,
    load_checkpoint,
)
from lookaside.errors import AdapterNotFound, InvalidCheckpoint
from service.errors import ActiveVersionConflict, UploadTooLarge
from service.store.index import (
    StoredAdapter,
    StoredVersion,
    StoreIndex,
    format_versions,
    identity,
    shown,
)
from service.store.journal import ChangeJournal
from service.store.layout import (
    ACTIVE_FILE,
    LAST_FILE,
    NAME_PATTERN,
    NAME_RULE,
    read_last,
    remove_tree_atomic,
    scan_name,
    write_pointer,
    write_version,
)
from service.store.repair import repair_store
from service.store.upload import validate_upload

__all__ = [
    "ACTIVE_FILE",
    "DEFAULT_MAX_MANIFEST_BYTES",
    "DEFAULT_MAX_WEIGHTS_BYTES",
    "LAST_FILE",
    "NAME_PATTERN",
    "ActiveVersionConflict",
    "AdapterStore",
    "PutResult",
    "StoredAdapter",
    "StoredVersion",
    "UploadTooLarge",
    "format_versions",
]

log = logging.getLogger("service.store")

DEFAULT_MAX_WEIGHTS_BYTES = 256 * 1024 * 1024
"""Largest ``adapter.safetensors`` accepted by default (a LoAA r=72 ViT-B adapter is ~35 MB)."""
DEFAULT_MAX_MANIFEST_BYTES = 1024 * 1024
"""A manifest is a few kB; anything larger is refused unread."""


@dataclass(frozen=True)
class PutResult:
    """What :meth:`AdapterStore.put` did."""

    name: str
    version: int
    created: bool
    """False when identical content was already stored as ``version`` (nothing was written)."""
    active: bool
    """Whether ``version`` is the active version after the call."""
    manifest: AdapterManifest
    """The manifest as stored (``version`` set by the store)."""
    checkpoint: ValidatedCheckpoint | None = field(default=None, repr=False, compare=False)
    """The upload as validated (stored manifest + its tensors in host memory), so the registry
    can load it without reading and validating it again; None where nothing was validated."""


class AdapterStore:
    """Versioned adapters under one root directory (see the module docstring for the layout)."""

    def __init__(
        self,
        root: Path,
        *,
        max_weights_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES,
        max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
        limits: CheckpointLimits | None = None,
        shared: bool = False,
    ) -> None:
        """Open (creating it if needed) the store at ``root`` and index it (one scan).

        ``shared``: other processes write this directory too (Ray Serve replicas): every
        mutation takes the store-wide file lock and is journalled (:mod:`service.store.journal`).

        ``limits``: what an adapter may be (the server's); its ``max_weights_bytes`` and
        ``max_manifest_bytes`` are then the store's byte limits and the two arguments above are
        ignored. Without it, the library's defaults with those two byte limits.
        """
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if limits is None:
            limits = CheckpointLimits(
                max_weights_bytes=max_weights_bytes, max_manifest_bytes=max_manifest_bytes
            )
        self.limits = limits
        """What an adapter may be (sizes, widths, labels, parameters), checked before allocation."""
        self.max_weights_bytes = limits.max_weights_bytes
        self.max_manifest_bytes = limits.max_manifest_bytes
        self._lock = threading.Lock()  # serialises mutations; held through their disk writes
        self._index = StoreIndex()  # its own lock, never held for I/O
        self.journal = ChangeJournal(self.root) if shared else None
        for name_dir in sorted(self.root.iterdir()):
            if NAME_PATTERN.fullmatch(name_dir.name) and name_dir.is_dir():
                entry = scan_name(name_dir, max_manifest_bytes=self.max_manifest_bytes)
                if entry is not None:
                    self._index.publish(name_dir.name, entry)

    # -- reads (the index only) -----------------------------------------------------------------
    def names(self) -> list[str]:
        """Names with at least one complete version, sorted."""
        return self._index.names()

    def name_count(self) -> int:
        """How many names the store holds (O(1), no disk: for metrics)."""
        return self._index.count()

    def page(self, after: str | None, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` names sorted after ``after`` (from the first when None), and whether
        more follow. O(log names + limit); a name deleted meanwhile still works as ``after``."""
        return self._index.page(after, limit)

    def get(self, name: str) -> StoredAdapter | None:
        """The index entry of ``name`` (one consistent snapshot), or None."""
        return self._index.get(name)

    def versions(self, name: str) -> list[int]:
        """Complete versions of ``name``, ascending (``[]`` for an unknown name)."""
        entry = self.get(name)
        return [] if entry is None else list(entry.versions)

    def has_version(self, name: str, version: int) -> bool:
        """Whether ``name@version`` is stored (O(1))."""
        entry = self.get(name)
        return entry is not None and version in entry.versions

    def active(self, name: str) -> int | None:
        """The active version of ``name``, or None (unknown name or no valid pointer)."""
        entry = self.get(name)
        return None if entry is None else entry.active

    def manifest(self, name: str, version: int) -> AdapterManifest:
        """The stored manifest of ``name@version`` (:class:`AdapterNotFound` lists what exists;
        :class:`InvalidCheckpoint` if the file on disk does not parse)."""
        stored = self._stored(name, version)
        if stored.manifest is None:
            raise InvalidCheckpoint(stored.problem or f"{name}@{version} has no valid manifest")
        return stored.manifest

    def load(self, name: str, version: int, *, backbone: VisionTransformer) -> ValidatedCheckpoint:
        """``name@version`` read from disk and fully validated against ``backbone`` (any thread)."""
        self._stored(name, version)  # raises AdapterNotFound with what exists
        ckpt = load_checkpoint(
            self.root / name / str(version), backbone=backbone, limits=self.limits
        )
        if (ckpt.manifest.name, ckpt.manifest.version) != (name, version):
            raise InvalidCheckpoint(
                f"{self.root / name / str(version)} holds {ckpt.manifest.id}, not "
                f"{name}@{version}: the store was edited by hand; delete that version"
            )
        return ckpt

    def describe(self, name: str) -> str:
        """What exists for ``name``, for error messages: its versions, else at most
        :data:`~service.store.index.CLOSE_MATCHES` similar names and the number of names (never
        the whole store)."""
        entry = self.get(name)
        if entry is not None:
            return f"versions of {name!r}: {format_versions(list(entry.versions), entry.active)}"
        rule = "" if NAME_PATTERN.fullmatch(name) else f" ({NAME_RULE})"
        return f"no adapter named {shown(name)}{rule}; {self._index.what_exists(name)}"

    # -- writes --------------------------------------------------------------------------------
    def put(
        self,
        manifest_bytes: bytes,
        weights_bytes: bytes,
        *,
        backbone: VisionTransformer,
        activate: bool = False,
    ) -> PutResult:
        """Validate an upload, then store it as a new version of its name.

        Nothing changes on disk unless the whole upload is valid. The manifest's ``version`` is
        replaced by the store's; the weights are stored byte for byte. Identical content already
        stored is not written again (``created=False``); with ``activate`` it becomes active.

        Raises:
            UploadTooLarge: a file is over the store's limits.
            IncompatibleBackbone: the manifest names another backbone fingerprint.
            InvalidCheckpoint: anything else is wrong (the message lists what).
        """
        ckpt = validate_upload(manifest_bytes, weights_bytes, backbone, self.limits)
        name = ckpt.manifest.name
        with self._writing(name):
            entry = self.get(name)
            same = None if entry is None else entry.identities.get(identity(ckpt.manifest))
            try:
                if entry is not None and same is not None:
                    return self._put_again(entry, same, ckpt, activate=activate)
                return self._put_new(entry, ckpt, weights_bytes, activate=activate)
            except BaseException:
                self._resync(name)
                raise

    def _put_again(
        self, entry: StoredAdapter, same: int, ckpt: ValidatedCheckpoint, *, activate: bool
    ) -> PutResult:
        """Identical content already stored as ``same``: nothing written but, with
        ``activate``, its pointer (under the write lock)."""
        if activate and entry.active != same:
            write_pointer(self.root / entry.name, ACTIVE_FILE, same)
            entry = self._index.publish(entry.name, entry.with_active(same))
        stored = entry.versions[same].manifest
        assert stored is not None  # only parsed manifests have an identity
        return PutResult(
            entry.name, same, False, entry.active == same, stored, ckpt.with_manifest(stored)
        )

    def _put_new(
        self,
        entry: StoredAdapter | None,
        ckpt: ValidatedCheckpoint,
        weights_bytes: bytes,
        *,
        activate: bool,
    ) -> PutResult:
        """Write a new version (directory, then ``LAST``, then ``ACTIVE`` where it becomes
        active), then publish it in the index (under the write lock)."""
        name = ckpt.manifest.name
        name_dir = self.root / name
        last = entry.last if entry is not None else read_last(name_dir)
        version = last + 1
        stored = ckpt.manifest.model_copy(update={"version": version})
        write_version(name_dir, stored, weights_bytes)
        write_pointer(name_dir, LAST_FILE, version)
        make_active = activate or entry is None or entry.active is None
        if make_active:
            write_pointer(name_dir, ACTIVE_FILE, version)
        base = entry or StoredAdapter.of(name, {}, None, last)
        entry = self._index.publish(
            name, base.with_version(StoredVersion.parsed(version, stored), active=make_active)
        )
        return PutResult(
            name, version, True, entry.active == version, stored, ckpt.with_manifest(stored)
        )

    def activate(self, name: str, version: int) -> None:
        """Make ``name@version`` the active version (rollback = activating an older one)."""
        with self._writing(name):
            self._stored(name, version)  # raises AdapterNotFound with what exists
            entry = self.get(name)
            assert entry is not None
            try:
                write_pointer(self.root / name, ACTIVE_FILE, version)
            except BaseException:
                self._resync(name)
                raise
            self._index.publish(name, entry.with_active(version))

    def delete_version(self, name: str, version: int, *, force: bool = False) -> int | None:
        """Delete ``name@version``; returns the active version afterwards.

        The active version is deleted only with ``force``; the pointer then moves to the newest
        remaining version (or is removed with the last one). Deleting the only version deletes
        the name.

        Raises:
            AdapterNotFound: no such version (the message lists what exists).
            ActiveVersionConflict: ``version`` is active and ``force`` is False.
        """
        with self._writing(name):
            self._stored(name, version)  # raises AdapterNotFound with what exists
            entry = self.get(name)
            assert entry is not None
            active = entry.active
            remaining = [v for v in entry.versions if v != version]
            if version == active and not force:
                others = ", ".join(str(v) for v in remaining) or "none"
                raise ActiveVersionConflict(
                    f"{name}@{version} is the active version; activate another version first "
                    f"(others: {others}) or delete it with ?force=true"
                )
            name_dir = self.root / name
            try:
                if not remaining:
                    self._index.forget(name)  # unresolvable before it goes from disk
                    remove_tree_atomic(name_dir)
                    return None
                if version == active:
                    active = remaining[-1]
                    write_pointer(name_dir, ACTIVE_FILE, active)
                self._index.publish(name, entry.without_version(version, active))
                remove_tree_atomic(name_dir / str(version))
            except BaseException:
                self._resync(name)
                raise
            return active

    def delete(self, name: str) -> list[int]:
        """Delete ``name`` and every version of it; returns the versions deleted."""
        with self._writing(name):
            entry = self.get(name)
            if entry is None:
                raise AdapterNotFound(f"unknown adapter {shown(name)}: {self.describe(name)}")
            try:
                self._index.forget(name)
                remove_tree_atomic(self.root / name)
            except BaseException:
                self._resync(name)
                raise
            return list(entry.versions)

    def cleanup(self) -> list[Path]:
        """Startup repair: remove what a crash left behind (temp dirs/files, names without any
        version), and give a name with versions but no valid ``ACTIVE`` its newest complete
        version as active (logged). Returns the paths removed.

        Call it before serving: temporaries are removed whatever their age.
        """
        with self._lock:
            return repair_store(self.root, self._index, self._resync)

    def refresh(self, name: str) -> None:
        """Re-read ``name`` from disk (a version another process wrote or deleted)."""
        if NAME_PATTERN.fullmatch(name):
            with self._lock:
                self._resync(name)

    def rescan(self) -> list[str]:
        """Re-read every name from disk (a reader behind the journal); returns the names."""
        with self._lock:
            names = set(self._index.names())
            names.update(d.name for d in self.root.iterdir() if NAME_PATTERN.fullmatch(d.name))
            for name in sorted(names):
                self._resync(name)
        return sorted(names)

    # -- helpers -------------------------------------------------------------------------------
    @contextmanager
    def _writing(self, name: str) -> Iterator[None]:
        """The write lock; shared, also the store-wide file lock, ``name`` re-read first (another
        process may have written it) and the change journalled after."""
        with self._lock:
            if self.journal is None:
                yield
                return
            with self.journal.locked():
                self._resync(name)
                try:
                    yield
                finally:
                    self.journal.record(name)

    def _stored(self, name: str, version: int) -> StoredVersion:
        """``name@version`` from the index, else :class:`AdapterNotFound` saying what exists."""
        if not NAME_PATTERN.fullmatch(name):
            raise AdapterNotFound(
                f"unknown adapter {shown(name)}: {NAME_RULE}; {self._index.what_exists(name)}"
            )
        entry = self.get(name)
        stored = None if entry is None else entry.versions.get(version)
        if stored is None:
            raise AdapterNotFound(f"unknown adapter '{name}@{version}'; {self.describe(name)}")
        return stored

    def _resync(self, name: str) -> StoredAdapter | None:
        """Re-read ``name`` from disk into the index (after a failed write, or at cleanup)."""
        try:
            entry = scan_name(self.root / name, max_manifest_bytes=self.max_manifest_bytes)
        except OSError:
            log.exception("re-reading %s from disk failed; restart to re-index the store", name)
            return self.get(name)
        if entry is None:
            self._index.forget(name)
            return None
        return self._index.publish(name, entry)
