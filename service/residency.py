"""The residency policy: every decision about which adapter versions stay in the bank.

One module decides, so there is one answer to each question:

- **A full stack** (no free slot for an adapter's method and config): the engine grows it to
  :func:`grown_capacity` (twice its slots) on its worker between batches, where no route holds
  it (``service.engine.loads``); the engine never evicts, since it does not know which versions
  requests hold. Only an engine whose stack cannot grow reports
  :class:`~lookaside.errors.BankFull`; the registry then evicts :meth:`Residency.victim` of that
  stack (idle, unpinned, least recently used) and retries, or answers 503 when there is none.
- **The resident limit** (``resident_limit`` versions): a target, not a cap. Before a load, idle
  versions are evicted least recently used first until the new one fits
  (:meth:`Residency.over_limit`); when every resident version is leased or pinned, the load goes
  ahead above the limit and the registry evicts back down as leases are released.
- **Pins**: a pinned ``name`` (its active version) or ``name@version`` is never evicted.

Threads: pure functions of what they are given. :func:`grown_capacity` runs on the engine
worker; :class:`Residency` runs under the registry's lock on whichever thread holds it (event
loop, registry loader threads, or any thread releasing a lease).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, Protocol

from lookaside.errors import ConfigError

__all__ = ["AdapterState", "Residency", "Resident", "grown_capacity"]

AdapterState = Literal["unloaded", "loading", "ready", "failed"]


def grown_capacity(slots: int) -> int:
    """The size a full stack of ``slots`` slots grows to (on the engine worker)."""
    return 2 * max(slots, 1)


class Resident(Protocol):
    """What the policy reads of one registry entry."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def state(self) -> AdapterState: ...
    @property
    def leases(self) -> int: ...
    @property
    def last_used(self) -> int: ...
    @property
    def stack(self) -> str | None: ...
    @property
    def resident(self) -> bool: ...


class Residency:
    """Eviction choices of one registry (module docstring).

    Args:
        resident_limit: target number of resident (or loading) versions.
        pinned: ``name`` or ``name@version`` references never evicted.
        active: the store's active version of a name (in-memory index; pins follow it).
    """

    def __init__(
        self, resident_limit: int, pinned: Iterable[str], active: Callable[[str], int | None]
    ) -> None:
        if resident_limit < 1:
            raise ConfigError(f"resident_limit must be >= 1, got {resident_limit}")
        self.resident_limit = resident_limit
        self.pinned = frozenset(pinned)
        self._active = active

    def is_pinned(self, entry: Resident) -> bool:
        if entry.id in self.pinned:
            return True
        return entry.name in self.pinned and self._active(entry.name) == entry.version

    def victim(
        self, entries: Iterable[Resident], *, stack: str | None = None, exclude: str | None = None
    ) -> Resident | None:
        """The least recently used ready version that is idle and unpinned (of ``stack``)."""
        idle = [
            e
            for e in entries
            if e.state == "ready"
            and e.leases == 0
            and e.id != exclude
            and (stack is None or e.stack == stack)
            and not self.is_pinned(e)
        ]
        return min(idle, key=lambda e: e.last_used, default=None)

    def over_limit(self, entries: Iterable[Resident], room_for: int = 0) -> Resident | None:
        """The next version to evict so ``room_for`` more fit under the limit; None when they
        fit, or when every resident version is leased or pinned (stay above the limit)."""
        listed = list(entries)
        # A version counts from the moment its load starts (so concurrent loads respect it).
        if sum(1 for e in listed if e.resident) + room_for <= self.resident_limit:
            return None
        return self.victim(listed)
