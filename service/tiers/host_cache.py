"""The host tier: validated, packed adapters kept in host memory, within a budget in bytes.

A hit saves the disk read and the validation of a reload: the registry loader puts what it
loaded (``put``), and looks here before the disk (``get``). Items are anything with ``nbytes``
(the packed adapter of :mod:`lookaside.bank.packed`; fakes in tests), and ``nbytes`` must not
change while cached. Keys are adapter ids ``name@version``: a version's bytes never change and
version numbers are never reused, so a key never serves stale bytes; deletes ``discard``.

Accounting (:class:`TierStats`): ``bytes`` is the sum of the cached items' ``nbytes`` and never
exceeds ``budget``. A copy to the device holds its item (``hold`` ... ``release``); if the item
is evicted or discarded meanwhile, its bytes move to ``inflight`` until the last release, since
the copy still references the buffer. Host memory is so bounded by ``budget + inflight``.
An item larger than the whole budget is never cached (``bypass``).

Threads: any. One lock guards everything; nothing under it calls out (no callbacks, no I/O):
evicted keys are returned to the caller, which acts on them after. Lock order: a caller may hold
its own lock (the registry's) around these calls, never the reverse.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from service.tiers.policy import EvictionPolicy, LruPolicy

__all__ = ["HostCache", "Sized", "TierStats"]


class Sized(Protocol):
    """What the cache reads of an item: its size in bytes (fixed while cached)."""

    @property
    def nbytes(self) -> int: ...


T = TypeVar("T", bound=Sized)


@dataclass(frozen=True)
class TierStats:
    """A consistent snapshot of one tier's counters and bytes (taken under its lock)."""

    hits: int
    misses: int
    bypass: int
    evictions: int
    bytes: int
    inflight: int
    budget: int
    entries: int


@dataclass
class _Entry(Generic[T]):
    item: T
    nbytes: int
    holds: int = 0


@dataclass
class _Gone:
    """Items evicted or discarded while held: their bytes until the last release."""

    nbytes: int
    holds: int


class HostCache(Generic[T]):
    """Items by key within ``budget_bytes``; victims chosen by ``policy`` (LRU by default)."""

    def __init__(self, budget_bytes: int, policy: EvictionPolicy | None = None) -> None:
        if budget_bytes < 0:
            raise ValueError(f"host cache budget must be >= 0 bytes, got {budget_bytes}")
        self._budget = budget_bytes
        self._policy: EvictionPolicy = policy if policy is not None else LruPolicy(budget_bytes)
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry[T]] = {}
        self._gone: dict[str, _Gone] = {}
        self._bytes = 0
        self._inflight = 0
        self._hits = self._misses = self._bypass = self._evictions = 0

    def get(self, key: str) -> T | None:
        """The cached item (touched: a hit), or None (a miss)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._hits += 1
            self._policy.touch(key)
            return entry.item

    def put(self, key: str, item: T) -> list[str]:
        """Cache ``item`` under ``key`` (replacing what was there); returns the evicted keys.

        An item over the whole budget is not cached (counted in ``bypass``; an older entry of
        ``key`` is dropped, so the cache never answers with it)."""
        nbytes = item.nbytes
        if nbytes < 0:
            raise ValueError(f"item {key!r} has a negative size: {nbytes}")
        with self._lock:
            self._drop(key)
            if nbytes > self._budget:
                self._bypass += 1
                return []
            evicted = self._make_room(nbytes)
            self._entries[key] = _Entry(item, nbytes)
            self._bytes += nbytes
            self._policy.admit(key, nbytes)
            return evicted

    def discard(self, key: str) -> bool:
        """Drop ``key`` (a deleted version); whether it was cached."""
        with self._lock:
            return self._drop(key)

    def hold(self, key: str) -> bool:
        """Mark the cached ``key`` as being copied (nested holds count); False if not cached."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            entry.holds += 1
            return True

    def release(self, key: str) -> None:
        """End one hold of ``key``. Releases go to an evicted copy first (its bytes leave
        ``inflight`` at its last release), then to the cached entry; extra releases are ignored."""
        with self._lock:
            gone = self._gone.get(key)
            if gone is not None:
                gone.holds -= 1
                if gone.holds == 0:
                    del self._gone[key]
                    self._inflight -= gone.nbytes
                return
            entry = self._entries.get(key)
            if entry is not None and entry.holds > 0:
                entry.holds -= 1

    def stats(self) -> TierStats:
        """Counters and bytes, consistent with each other."""
        with self._lock:
            return TierStats(
                hits=self._hits,
                misses=self._misses,
                bypass=self._bypass,
                evictions=self._evictions,
                bytes=self._bytes,
                inflight=self._inflight,
                budget=self._budget,
                entries=len(self._entries),
            )

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is cached (not counted as a hit or a miss, not touched)."""
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _make_room(self, nbytes: int) -> list[str]:
        """Evict in policy order until ``nbytes`` more fit (under the lock; ``nbytes`` fits the
        budget, and every entry is evictable, so this always succeeds)."""
        need = self._bytes + nbytes - self._budget
        if need <= 0:
            return []
        chosen: list[str] = []
        for key in self._policy.victims(lambda _key: True):
            chosen.append(key)
            need -= self._entries[key].nbytes
            if need <= 0:
                break
        for key in chosen:
            self._drop(key, evicted=True)
        self._evictions += len(chosen)
        return chosen

    def _drop(self, key: str, *, evicted: bool = False) -> bool:
        """Remove ``key`` (under the lock); a held entry's bytes move to ``inflight``."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes -= entry.nbytes
        self._policy.discard(key, evicted=evicted)
        if entry.holds:
            gone = self._gone.setdefault(key, _Gone(0, 0))
            gone.nbytes += entry.nbytes
            gone.holds += entry.holds
            self._inflight += entry.nbytes
        return True
