"""The adapter store's in-memory index: every name's versions, pointers and content identities.

The disk is the truth (:mod:`service.store.layout`), but nothing reads it to answer a question:
:class:`StoreIndex` answers every lookup (names, a page of names, one name's snapshot, close
matches for a 404) in O(1) or O(log names + its answer). Each name's entry
(:class:`StoredAdapter`) is immutable and replaced whole, so what a read returns is one
consistent state of that name. It holds manifests only (each bounded by the manifest byte limit),
never weights.

Threads: any thread reads (the event loop, a metrics scrape, a loader thread); the store's
mutating thread (holding :class:`~service.store.AdapterStore`'s write lock) publishes and forgets.
One lock guards the dict and the two sorted name lists and is never held during I/O, so a read
waits at most for a dict update, never for a write's fsync.
"""

from __future__ import annotations

import bisect
import difflib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from lookaside.checkpoint import AdapterManifest

__all__ = [
    "CLOSE_MATCHES",
    "Identity",
    "StoreIndex",
    "StoredAdapter",
    "StoredVersion",
    "format_versions",
    "identity",
    "shown",
]

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


def identity(manifest: AdapterManifest) -> Identity:
    """What identical uploads share: the weights' sha256 and the manifest without the fields the
    store sets (``version``, ``created``)."""
    kept = manifest.model_dump(mode="json", exclude=set(_IGNORED_FOR_IDENTITY))
    return manifest.weights_sha256, json.dumps(kept, sort_keys=True)


def shown(name: str) -> str:
    """``name`` quoted for a message, cut to a bounded length (it may come from a client)."""
    if len(name) <= _SHOWN_NAME_CHARS:
        return repr(name)
    return repr(name[:_SHOWN_NAME_CHARS]) + f"... ({len(name)} characters)"


def format_versions(versions: list[int], active: int | None) -> str:
    """``1, 2, 3 (active: 2)``: for messages that list what exists."""
    if not versions:
        return "none"
    listed = ", ".join(str(v) for v in versions)
    return f"{listed} (active: {active})" if active is not None else f"{listed} (none active)"


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
        return StoredVersion(version, manifest, None, identity(manifest))


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


class StoreIndex:
    """Name -> :class:`StoredAdapter`, with the names kept sorted (pages, close matches)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the three fields below; never held for I/O
        self._entries: dict[str, StoredAdapter] = {}
        self._sorted: list[str] = []
        self._reversed: list[str] = []  # each name reversed, sorted: close matches by suffix

    def names(self) -> list[str]:
        """Every name, sorted."""
        with self._lock:
            return list(self._sorted)

    def count(self) -> int:
        """How many names (O(1))."""
        with self._lock:
            return len(self._entries)

    def page(self, after: str | None, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` names sorted after ``after`` (from the first when None), and whether
        more follow. O(log names + limit); a name deleted meanwhile still works as ``after``."""
        with self._lock:
            start = 0 if after is None else bisect.bisect_right(self._sorted, after)
            names = self._sorted[start : start + max(limit, 0)]
            return names, start + len(names) < len(self._sorted)

    def get(self, name: str) -> StoredAdapter | None:
        """The entry of ``name`` (one consistent snapshot), or None."""
        with self._lock:
            return self._entries.get(name)

    def publish(self, name: str, entry: StoredAdapter) -> StoredAdapter:
        """Put ``entry`` in the index as ``name``; returns it."""
        with self._lock:
            if name not in self._entries:
                bisect.insort(self._sorted, name)
                bisect.insort(self._reversed, name[::-1])
            self._entries[name] = entry
            return entry

    def forget(self, name: str) -> None:
        """Drop ``name`` (before its files go, so nothing resolves to them)."""
        with self._lock:
            if self._entries.pop(name, None) is not None:
                del self._sorted[bisect.bisect_left(self._sorted, name)]
                del self._reversed[bisect.bisect_left(self._reversed, name[::-1])]

    def what_exists(self, name: str) -> str:
        """The whole store when it is tiny, else its size and the names closest to ``name``."""
        with self._lock:
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
