"""Eviction policies of the adapter tiers: which cached entry leaves first.

A policy only orders keys; its owner (:class:`~service.tiers.host_cache.HostCache`, or the
registry for the device tier) holds the entries, counts bytes and decides how many to evict.
Pure Python (no torch) so a trace replay (``benchmarks/cache_policy.py``) runs the exact code.

- :class:`LruPolicy`: least recently used first (the baseline).
- :class:`TwoQPolicy`: 2Q (Johnson and Shasha, VLDB 1994). A first touch enters a probationary
  FIFO (about 25 % of the budget); a second touch promotes the key to the main LRU. Victims come
  from the probationary FIFO while it is over its share, so a burst of one-hit keys (a cold burst
  of tail adapters) evicts other one-hit keys, never the twice-touched hot set. A *ghost* list
  remembers keys recently evicted from probation (keys and sizes only, no items): re-admitting one
  goes straight to the main LRU. It is off by default (``ghost=0``): since a second touch inside
  probation already promotes, the ghost only adds keys whose reuse distance is longer than the
  probationary FIFO, and those push hotter keys out of the main LRU; the trace replay
  (``benchmarks/cache_policy.py``, column ``2q+ghost``) measures it 0.6-0.8 points *lower* than
  without on Zipf(1.1) traffic at every budget from 64 to 2,000 items (within 0.8 either way on
  the cold-burst trace).

Threads: none of their own; a policy is not thread-safe, its owner calls it under its lock.
Iteration contract: :meth:`EvictionPolicy.victims` is lazy; the caller collects what it needs,
then calls :meth:`~EvictionPolicy.discard` for each (no change to the policy while iterating).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Protocol

__all__ = ["POLICIES", "EvictionPolicy", "LruPolicy", "TwoQPolicy", "make_policy"]


class EvictionPolicy(Protocol):
    """Orders cached keys for eviction (sizes in bytes, or 1 per key for a count budget)."""

    def admit(self, key: str, nbytes: int) -> None:
        """A new entry was cached (a known key: size updated, counts as a touch)."""

    def touch(self, key: str) -> None:
        """A cached entry was used (unknown keys are ignored)."""

    def discard(self, key: str, *, evicted: bool = False) -> None:
        """An entry left the cache: ``evicted=True`` when it was a victim of this policy (2Q may
        remember it), False when it was deleted (unknown keys are ignored)."""

    def victims(self, evictable: Callable[[str], bool]) -> Iterator[str]:
        """Cached keys in eviction order, skipping those ``evictable`` rejects (leased, pinned)."""

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...


class LruPolicy:
    """Least recently used first. ``budget`` is accepted (and unused) so every policy in
    :data:`POLICIES` is built the same way."""

    def __init__(self, budget: int = 0) -> None:
        self._order: OrderedDict[str, int] = OrderedDict()  # oldest first

    def admit(self, key: str, nbytes: int) -> None:
        self._order[key] = nbytes
        self._order.move_to_end(key)

    def touch(self, key: str) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def discard(self, key: str, *, evicted: bool = False) -> None:
        self._order.pop(key, None)

    def victims(self, evictable: Callable[[str], bool]) -> Iterator[str]:
        return (key for key in self._order if evictable(key))

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._order


class TwoQPolicy:
    """2Q: a probationary FIFO for first touches (``probation`` x ``budget`` bytes), promoted
    to a main LRU on a second touch, and a ghost list of keys evicted from probation
    (``ghost`` x ``budget`` of their sizes; 0, the default, disables it) that re-enter straight
    into the main LRU."""

    def __init__(self, budget: int, *, probation: float = 0.25, ghost: float = 0.0) -> None:
        if budget < 0 or not 0.0 < probation <= 1.0 or ghost < 0.0:
            raise ValueError(f"bad 2Q sizes: budget {budget}, probation {probation}, ghost {ghost}")
        self._probation_budget = int(budget * probation)
        self._ghost_budget = int(budget * ghost)
        self._probation: OrderedDict[str, int] = OrderedDict()  # FIFO, oldest first
        self._main: OrderedDict[str, int] = OrderedDict()  # LRU, oldest first
        self._ghost: OrderedDict[str, int] = OrderedDict()  # evicted from probation, oldest first
        self._probation_bytes = 0
        self._ghost_bytes = 0

    def admit(self, key: str, nbytes: int) -> None:
        if key in self._main:
            self._main[key] = nbytes
            self._main.move_to_end(key)
            return
        if key in self._probation:
            self._probation_bytes -= self._probation.pop(key)
            self._main[key] = nbytes  # a second touch
            return
        if key in self._ghost:
            self._ghost_bytes -= self._ghost.pop(key)
            self._main[key] = nbytes  # seen recently: not a one-hit key
            return
        self._probation[key] = nbytes
        self._probation_bytes += nbytes

    def touch(self, key: str) -> None:
        if key in self._main:
            self._main.move_to_end(key)
        elif key in self._probation:
            nbytes = self._probation.pop(key)
            self._probation_bytes -= nbytes
            self._main[key] = nbytes

    def discard(self, key: str, *, evicted: bool = False) -> None:
        if self._main.pop(key, None) is not None:
            return
        nbytes = self._probation.pop(key, None)
        if nbytes is None:
            return
        self._probation_bytes -= nbytes
        if evicted and self._ghost_budget > 0:
            self._ghost[key] = nbytes
            self._ghost_bytes += nbytes
            while self._ghost_bytes > self._ghost_budget:
                self._ghost_bytes -= self._ghost.popitem(last=False)[1]

    def victims(self, evictable: Callable[[str], bool]) -> Iterator[str]:
        """Probation (oldest first) while it would stay over its share, then the main LRU, then
        the rest of probation."""
        over = self._probation_bytes
        rest = iter(self._probation.items())
        pending: str | None = None
        for key, nbytes in rest:
            if over <= self._probation_budget and self._main:
                pending = key
                break
            if evictable(key):
                over -= nbytes
                yield key
        yield from (key for key in self._main if evictable(key))
        if pending is not None and evictable(pending):
            yield pending
        yield from (key for key, _ in rest if evictable(key))

    def ghosts(self) -> int:
        """How many evicted keys the ghost list remembers (for tests and the replay)."""
        return len(self._ghost)

    def __len__(self) -> int:
        return len(self._probation) + len(self._main)

    def __contains__(self, key: object) -> bool:
        return key in self._main or key in self._probation


POLICIES: dict[str, Callable[[int], EvictionPolicy]] = {"lru": LruPolicy, "2q": TwoQPolicy}
"""Policies by setting name; each is built from the tier's budget (bytes, or items)."""


def make_policy(name: str, budget: int) -> EvictionPolicy:
    """The policy called ``name`` (a key of :data:`POLICIES`) for a tier of ``budget``."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}: one of {sorted(POLICIES)}") from None
    return factory(budget)
