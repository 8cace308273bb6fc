"""The adapter store: versioned adapter checkpoints on disk, written atomically, read from an index.

Layout (Triton's model repository, with a pointer per name)::

    <root>/<name>/<version>/manifest.json      the manifest, its ``version`` set by the store
    <root>/<name>/<version>/adapter.safetensors the uploaded weights, byte for byte
    <root>/<name>/ACTIVE                        text: the active version of ``name``
    <root>/<name>/LAST                          text: the highest version ever assigned to ``name``

Versions are integers the store assigns on upload: one more than the highest ever assigned to
that name (``LAST``), so a deleted version's number is never reused while the name exists (caches
keyed by ``name@version`` cannot serve a deleted version's results for a new upload). Deleting a
whole name forgets its history: a later upload of that name starts again at 1.

The first version of a name becomes active at once (there is nothing to disrupt); later versions
only when asked (``activate=True`` or :meth:`AdapterStore.activate`). Re-uploading identical
content (same weights sha256, same manifest apart from ``version`` and ``created``) returns the
existing version with ``created=False``, and makes it active when ``activate=True``.

Index: the disk is the truth, but nothing reads it to answer a question. One scan when the store
is opened builds an in-memory index of every name (its complete versions with their parsed
manifests and content identity, ``ACTIVE`` and ``LAST``); every mutation changes the disk first
where readers could otherwise see a version that is not there (upload, activate) and the index
first where they could resolve one that is going away (deletes), both under the store's lock, and
re-reads that one name from disk if a write fails. So a lookup (``names``, ``versions``,
``active``, ``manifest``, ``describe``, a page of names) costs O(1) or O(its answer) and never
touches the disk, and an upload costs the same whatever the number of versions or names (one
dict lookup finds identical content). The index holds manifests only (each bounded by the
manifest byte limit), never weights; :meth:`AdapterStore.load` reads and validates those from
disk. A version directory counts once it holds ``manifest.json`` (it is renamed into place
whole); a manifest that does not parse is listed and refused when read or loaded.

Durability: a version directory is written by :func:`write_dir_atomic` (temp sibling, fsync,
rename), then ``LAST`` and ``ACTIVE`` by :func:`write_file_atomic`, so a crash leaves either the
whole version or nothing visible, and an acknowledged upload survives a restart. Deletions rename
the version aside before removing it, so a crash mid-delete never leaves half a version. Temp
leftovers (``.<x>.tmp-*``) are invisible to every read and removed by :meth:`cleanup`, which also
repairs a name left with versions but no valid ``ACTIVE`` (a crash between a first version's
rename and its pointer write): its newest complete version becomes active, logged as a warning.

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

import bisect
import difflib
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AdapterCheckpoint,
    AdapterManifest,
    CheckpointLimits,
    load_checkpoint,
    load_manifest,
    validate_checkpoint_bytes,
)
from lookaside.checkpoint.atomic import (
    fsync_dir,
    remove_stale_temps,
    write_dir_atomic,
    write_file_atomic,
)
from lookaside.errors import AdapterNotFound, InvalidCheckpoint
from service.errors import PayloadTooLarge, ServiceError

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

ACTIVE_FILE = "ACTIVE"
LAST_FILE = "LAST"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
"""Adapter names: what :class:`AdapterManifest` accepts; no dots or slashes, so no traversal."""
DEFAULT_MAX_WEIGHTS_BYTES = 256 * 1024 * 1024
"""Largest ``adapter.safetensors`` accepted by default (a LoAA r=72 ViT-B adapter is ~35 MB)."""
DEFAULT_MAX_MANIFEST_BYTES = 1024 * 1024
"""A manifest is a few kB; anything larger is refused unread."""
CLOSE_MATCHES = 5
"""Most names a "no adapter named ..." message suggests (it never lists the whole store)."""
_MATCH_WINDOW = 32
"""Names considered for close matches: this many either side of the asked name in sorted order
and in sorted-reversed order (a typo late or early in the name), so a 404 costs the same at any
store size."""
_SHOWN_NAME_CHARS = 80
_IGNORED_FOR_IDENTITY = frozenset({"version", "created"})

Identity = tuple[str, str]
"""(weights sha256, manifest without ``version``/``created``): equal means identical content."""


class UploadTooLarge(PayloadTooLarge):
    """An uploaded file is over the store's size limit (HTTP 413)."""


class ActiveVersionConflict(ServiceError):
    """Deleting the active version was asked without ``force`` (HTTP 409)."""

    status_code = 409


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
    checkpoint: AdapterCheckpoint | None = field(default=None, repr=False, compare=False)
    """The upload as validated (stored manifest + its tensors in host memory), so the registry
    can load it without reading and validating it again; None where nothing was validated."""


@dataclass(frozen=True)
class StoredVersion:
    """One complete version as the index knows it."""

    version: int
    manifest: AdapterManifest | None
    """The parsed ``manifest.json``; None when it does not parse (see ``problem``)."""
    problem: str | None = None
    """Why the manifest on disk was refused (reading or loading this version says it)."""
    identity: Identity | None = field(default=None, repr=False, compare=False)
    """What identical uploads share (None for an unparsable manifest); computed once."""

    @staticmethod
    def parsed(version: int, manifest: AdapterManifest) -> StoredVersion:
        """A version whose manifest parsed, with its content identity."""
        return StoredVersion(version, manifest, None, _identity(manifest))


@dataclass(frozen=True)
class StoredAdapter:
    """One name in the index: an immutable snapshot, replaced whole by each mutation (each
    change copies two dicts of this name's size: O(versions), no parsing, no disk)."""

    name: str
    versions: Mapping[int, StoredVersion]
    """Complete versions, ascending."""
    active: int | None
    """The active version (None: no valid ``ACTIVE``; :meth:`AdapterStore.cleanup` repairs)."""
    last: int
    """Highest version ever assigned (``LAST``, at least the highest stored version)."""
    identities: Mapping[Identity, int] = field(repr=False, compare=False)
    """Content identity -> version, for identical uploads in O(1)."""

    @staticmethod
    def of(
        name: str, versions: Mapping[int, StoredVersion], active: int | None, last: int
    ) -> StoredAdapter:
        """A snapshot of ``versions`` (sorted here) with its identity map."""
        ordered = dict(sorted(versions.items()))
        identities: dict[Identity, int] = {}
        for number, stored in ordered.items():
            if stored.identity is not None:
                identities.setdefault(stored.identity, number)
        return StoredAdapter._make(name, ordered, active, last, identities)

    @staticmethod
    def _make(
        name: str,
        ordered: dict[int, StoredVersion],
        active: int | None,
        last: int,
        identities: dict[Identity, int],
    ) -> StoredAdapter:
        return StoredAdapter(
            name,
            MappingProxyType(ordered),
            active if active in ordered else None,
            max([last, *ordered]) if ordered else last,
            MappingProxyType(identities),
        )

    def with_version(self, stored: StoredVersion, *, active: bool) -> StoredAdapter:
        """This name plus a new highest version, made active if ``active``."""
        versions = {**self.versions, stored.version: stored}  # still ascending
        identities = dict(self.identities)
        if stored.identity is not None:
            identities.setdefault(stored.identity, stored.version)
        pointer = stored.version if active else self.active
        return StoredAdapter._make(self.name, versions, pointer, stored.version, identities)

    def without_version(self, version: int, active: int | None) -> StoredAdapter:
        """This name minus ``version``, with ``active`` as the pointer."""
        versions = {v: s for v, s in self.versions.items() if v != version}
        return StoredAdapter.of(self.name, versions, active, self.last)

    def with_active(self, version: int) -> StoredAdapter:
        """This name with ``version`` active."""
        return StoredAdapter._make(
            self.name, dict(self.versions), version, self.last, dict(self.identities)
        )


def format_versions(versions: list[int], active: int | None) -> str:
    """``1, 2, 3 (active: 2)``: for messages that list what exists."""
    if not versions:
        return "none"
    listed = ", ".join(str(v) for v in versions)
    return f"{listed} (active: {active})" if active is not None else f"{listed} (none active)"


class AdapterStore:
    """Versioned adapters under one root directory (see the module docstring for the layout)."""

    def __init__(
        self,
        root: Path,
        *,
        max_weights_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES,
        max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
        limits: CheckpointLimits | None = None,
    ) -> None:
        """Open (creating it if needed) the store at ``root`` and index it (one scan).

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
        self._index_lock = threading.Lock()  # guards the three fields below; never held for I/O
        self._index: dict[str, StoredAdapter] = {}
        self._sorted: list[str] = []
        self._reversed: list[str] = []  # each name reversed, sorted: close matches by suffix
        self._rebuild()

    # -- reads (the index only) -----------------------------------------------------------------
    def names(self) -> list[str]:
        """Names with at least one complete version, sorted."""
        with self._index_lock:
            return list(self._sorted)

    def name_count(self) -> int:
        """How many names the store holds (O(1), no disk: for metrics)."""
        with self._index_lock:
            return len(self._index)

    def page(self, after: str | None, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` names sorted after ``after`` (from the first when None), and whether
        more follow. O(log names + limit); a name deleted meanwhile still works as ``after``."""
        with self._index_lock:
            start = 0 if after is None else bisect.bisect_right(self._sorted, after)
            names = self._sorted[start : start + max(limit, 0)]
            return names, start + len(names) < len(self._sorted)

    def get(self, name: str) -> StoredAdapter | None:
        """The index entry of ``name`` (one consistent snapshot), or None."""
        with self._index_lock:
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

    def load(self, name: str, version: int, *, backbone: VisionTransformer) -> AdapterCheckpoint:
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
        :data:`CLOSE_MATCHES` similar names and the number of names (never the whole store)."""
        entry = self.get(name)
        if entry is not None:
            return f"versions of {name!r}: {format_versions(list(entry.versions), entry.active)}"
        rule = "" if NAME_PATTERN.fullmatch(name) else f" ({_NAME_RULE})"
        return f"no adapter named {_shown(name)}{rule}; {self._what_exists(name)}"

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
        ckpt = self._validate(manifest_bytes, weights_bytes, backbone)
        manifest = ckpt.manifest
        name = manifest.name
        key = _identity(manifest)
        name_dir = self.root / name
        with self._lock:
            entry = self.get(name)
            same = None if entry is None else entry.identities.get(key)
            try:
                if entry is not None and same is not None:
                    if activate and entry.active != same:
                        write_file_atomic(name_dir / ACTIVE_FILE, f"{same}\n".encode("ascii"))
                        entry = self._publish(name, entry.with_active(same))
                    stored = entry.versions[same].manifest
                    assert stored is not None  # only parsed manifests have an identity
                    return PutResult(
                        name,
                        same,
                        False,
                        entry.active == same,
                        stored,
                        AdapterCheckpoint(stored, ckpt.tensors),
                    )
                last = entry.last if entry is not None else _read_last(name_dir)
                version = last + 1
                stored = manifest.model_copy(update={"version": version})
                name_dir.mkdir(exist_ok=True)
                write_dir_atomic(
                    name_dir / str(version),
                    {MANIFEST_FILE: _manifest_bytes(stored), WEIGHTS_FILE: weights_bytes},
                )
                write_file_atomic(name_dir / LAST_FILE, f"{version}\n".encode("ascii"))
                make_active = activate or entry is None or entry.active is None
                if make_active:
                    write_file_atomic(name_dir / ACTIVE_FILE, f"{version}\n".encode("ascii"))
            except BaseException:
                self._resync(name)
                raise
            base = entry or StoredAdapter.of(name, {}, None, last)
            entry = self._publish(
                name, base.with_version(StoredVersion.parsed(version, stored), active=make_active)
            )
            return PutResult(
                name,
                version,
                True,
                entry.active == version,
                stored,
                AdapterCheckpoint(stored, ckpt.tensors),
            )

    def activate(self, name: str, version: int) -> None:
        """Make ``name@version`` the active version (rollback = activating an older one)."""
        with self._lock:
            self._stored(name, version)  # raises AdapterNotFound with what exists
            entry = self.get(name)
            assert entry is not None
            try:
                write_file_atomic(self.root / name / ACTIVE_FILE, f"{version}\n".encode("ascii"))
            except BaseException:
                self._resync(name)
                raise
            self._publish(name, entry.with_active(version))

    def delete_version(self, name: str, version: int, *, force: bool = False) -> int | None:
        """Delete ``name@version``; returns the active version afterwards.

        The active version is deleted only with ``force``; the pointer then moves to the newest
        remaining version (or is removed with the last one). Deleting the only version deletes
        the name.

        Raises:
            AdapterNotFound: no such version (the message lists what exists).
            ActiveVersionConflict: ``version`` is active and ``force`` is False.
        """
        with self._lock:
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
                    self._forget(name)  # unresolvable before it goes from disk
                    _remove_tree_atomic(name_dir)
                    return None
                if version == active:
                    active = remaining[-1]
                    write_file_atomic(name_dir / ACTIVE_FILE, f"{active}\n".encode("ascii"))
                self._publish(name, entry.without_version(version, active))
                _remove_tree_atomic(name_dir / str(version))
            except BaseException:
                self._resync(name)
                raise
            return active

    def delete(self, name: str) -> list[int]:
        """Delete ``name`` and every version of it; returns the versions deleted."""
        with self._lock:
            entry = self.get(name)
            if entry is None:
                raise AdapterNotFound(f"unknown adapter {_shown(name)}: {self.describe(name)}")
            try:
                self._forget(name)
                _remove_tree_atomic(self.root / name)
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
        removed: list[Path] = []
        with self._lock:
            removed += remove_stale_temps(self.root)
            for name_dir in sorted(self.root.iterdir()):
                if not (name_dir.is_dir() and NAME_PATTERN.fullmatch(name_dir.name)):
                    continue
                handled = remove_stale_temps(name_dir)
                removed += handled
                name = name_dir.name
                entry = self.get(name)
                if entry is None or any(".old-" in p.name for p in handled):
                    entry = self._resync(name)  # the disk is the truth: look again
                if entry is None:
                    shutil.rmtree(name_dir, ignore_errors=True)
                    removed.append(name_dir)
                elif entry.active is None:
                    self._repair_active(entry)
        return removed

    # -- helpers -------------------------------------------------------------------------------
    def _validate(
        self, manifest_bytes: bytes, weights_bytes: bytes, backbone: VisionTransformer
    ) -> AdapterCheckpoint:
        """The upload parsed and checked by lookaside.checkpoint; raises before any write."""
        for what, data, limit in (
            ("manifest", manifest_bytes, self.max_manifest_bytes),
            ("weights", weights_bytes, self.max_weights_bytes),
        ):
            if len(data) > limit:
                raise UploadTooLarge(
                    f"the {what} file is {len(data)} bytes, over this server's limit of {limit} "
                    "bytes; upload a smaller adapter or raise the limit in the settings"
                )
        if not weights_bytes:
            raise InvalidCheckpoint("the weights file is empty; upload adapter.safetensors")
        return validate_checkpoint_bytes(
            manifest_bytes, weights_bytes, backbone=backbone, limits=self.limits
        )

    def _stored(self, name: str, version: int) -> StoredVersion:
        """``name@version`` from the index, else :class:`AdapterNotFound` saying what exists."""
        if not NAME_PATTERN.fullmatch(name):
            raise AdapterNotFound(
                f"unknown adapter {_shown(name)}: {_NAME_RULE}; {self._what_exists(name)}"
            )
        entry = self.get(name)
        stored = None if entry is None else entry.versions.get(version)
        if stored is None:
            raise AdapterNotFound(f"unknown adapter '{name}@{version}'; {self.describe(name)}")
        return stored

    def _what_exists(self, name: str) -> str:
        """The whole store when it is tiny, else its size and the names closest to ``name``."""
        with self._index_lock:
            count = len(self._sorted)
            if count <= CLOSE_MATCHES:
                listed = list(self._sorted)
                candidates: list[str] = []
            else:
                listed = []
                at = bisect.bisect_left(self._sorted, name)
                candidates = self._sorted[max(at - _MATCH_WINDOW, 0) : at + _MATCH_WINDOW]
                backwards = name[::-1]
                at = bisect.bisect_left(self._reversed, backwards)
                window = self._reversed[max(at - _MATCH_WINDOW, 0) : at + _MATCH_WINDOW]
                candidates += [r[::-1] for r in window]
        if count == 0:
            return "adapters in the store: none (upload one with POST /adapters)"
        if listed:
            return f"adapters in the store: {', '.join(listed)}"
        close = difflib.get_close_matches(
            name[:_SHOWN_NAME_CHARS], list(dict.fromkeys(candidates)), n=CLOSE_MATCHES
        )
        similar = f"similar names: {', '.join(close)}" if close else "no similar name"
        return f"{count} adapters in the store, {similar} (GET /adapters lists them)"

    def _publish(self, name: str, entry: StoredAdapter) -> StoredAdapter:
        """Put ``entry`` in the index as ``name``; returns it."""
        with self._index_lock:
            if name not in self._index:
                bisect.insort(self._sorted, name)
                bisect.insort(self._reversed, name[::-1])
            self._index[name] = entry
            return entry

    def _forget(self, name: str) -> None:
        """Drop ``name`` from the index (before its files go, so nothing resolves to them)."""
        with self._index_lock:
            if self._index.pop(name, None) is not None:
                del self._sorted[bisect.bisect_left(self._sorted, name)]
                del self._reversed[bisect.bisect_left(self._reversed, name[::-1])]

    def _resync(self, name: str) -> StoredAdapter | None:
        """Re-read ``name`` from disk into the index (after a failed write, or at cleanup)."""
        try:
            entry = self._scan_name(self.root / name)
        except OSError:
            log.exception("re-reading %s from disk failed; restart to re-index the store", name)
            return self.get(name)
        if entry is None:
            self._forget(name)
            return None
        return self._publish(name, entry)

    def _rebuild(self) -> None:
        """The index from one scan of the disk (at open)."""
        for name_dir in sorted(self.root.iterdir()):
            if NAME_PATTERN.fullmatch(name_dir.name) and name_dir.is_dir():
                entry = self._scan_name(name_dir)
                if entry is not None:
                    self._publish(name_dir.name, entry)

    def _scan_name(self, name_dir: Path) -> StoredAdapter | None:
        """One name as the disk has it: complete versions (parsed), ACTIVE, LAST; None when it
        has no complete version."""
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
                manifest = load_manifest(path, max_bytes=self.max_manifest_bytes)
            except InvalidCheckpoint as exc:
                versions[number] = StoredVersion(number, None, str(exc))
            else:
                versions[number] = StoredVersion.parsed(number, manifest)
        if not versions:
            return None
        return StoredAdapter.of(
            name_dir.name, versions, _read_number(name_dir / ACTIVE_FILE), _read_last(name_dir)
        )

    def _repair_active(self, entry: StoredAdapter) -> None:
        """Make the newest complete version of a name without a valid pointer active."""
        readable = [v for v, s in entry.versions.items() if s.manifest is not None]
        version = (readable or list(entry.versions))[-1]
        name_dir = self.root / entry.name
        try:
            write_file_atomic(name_dir / ACTIVE_FILE, f"{version}\n".encode("ascii"))
        except BaseException:
            self._resync(entry.name)
            raise
        self._publish(entry.name, entry.with_active(version))
        log.warning(
            "adapter %r had versions %s but no valid active version (a write was interrupted "
            "before its ACTIVE pointer); made %s@%d active",
            entry.name,
            format_versions(list(entry.versions), None),
            entry.name,
            version,
        )


_NAME_RULE = "names are 1-64 lower-case letters, digits, '-' or '_'"


def _shown(name: str) -> str:
    """``name`` quoted for a message, cut to a bounded length (it may come from a client)."""
    if len(name) <= _SHOWN_NAME_CHARS:
        return repr(name)
    return repr(name[:_SHOWN_NAME_CHARS]) + f"... ({len(name)} characters)"


def _read_number(path: Path) -> int | None:
    """The decimal number a pointer file holds, or None (missing, unreadable, not a number)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _read_last(name_dir: Path) -> int:
    return _read_number(name_dir / LAST_FILE) or 0


def _identity(manifest: AdapterManifest) -> Identity:
    kept = manifest.model_dump(mode="json", exclude=set(_IGNORED_FOR_IDENTITY))
    return manifest.weights_sha256, json.dumps(kept, sort_keys=True)


def _manifest_bytes(manifest: AdapterManifest) -> bytes:
    """The manifest as :meth:`AdapterCheckpoint.save` writes it (sorted keys, no NaN)."""
    text = json.dumps(manifest.model_dump(mode="json"), sort_keys=True, indent=2, allow_nan=False)
    return (text + "\n").encode("utf-8")


def _remove_tree_atomic(path: Path) -> None:
    """Rename ``path`` to a temp name (one atomic step readers see), then delete it."""
    aside = path.with_name(f".{path.name}.tmp-del_{uuid.uuid4().hex[:8]}")
    os.replace(path, aside)
    fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)
