"""The residency policy: every decision about which adapter versions stay on the device.

One module decides, so there is one answer to each question:

- **The device tier's budget** (``budget_bytes``: the device bytes of resident versions, known
  before a load by arithmetic from the manifest) and an optional count cap (``count_limit``):
  targets, not hard caps. Before a load, idle versions are evicted in the eviction policy's
  order until the new one fits (:meth:`Residency.over_limit`); when every resident version is
  leased or pinned, the load goes ahead above the target and the registry evicts back down as
  leases are released.
- **Which version leaves first**: the :mod:`service.tiers.policy` policy (``2q`` by default in
  the server: a first touch waits in a probationary queue, so a burst of one-off adapters evicts
  other one-off adapters, not the hot ones; ``lru`` is the baseline). Only idle (no lease),
  unpinned, ready versions are victims.
- **A full stack** (no free slot for an adapter's method and config): the engine grows it to
  :func:`grown_capacity` (twice its slots, fewer where its own byte budget says so) on its worker
  between batches (``service.engine.loads``); the engine never evicts, since it does not know
  which versions requests hold. An engine whose stack cannot grow reports
  :class:`~lookaside.errors.BankFull`; the registry then evicts :meth:`Residency.victim` of that
  stack and retries, or answers 503 when there is none.
- **Pins**: a pinned ``name`` (its active version) or ``name@version`` is never evicted.

Threads: :func:`grown_capacity` runs on the engine worker; :class:`Residency` (and its policy,
which is not thread-safe) runs under the registry map's lock on whichever thread holds it (event
loop, registry loader threads, or any thread releasing a lease).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal, Protocol

from lookaside.errors import ConfigError
from service.tiers.policy import EvictionPolicy, LruPolicy

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
    def stack(self) -> str | None: ...
    @property
    def resident(self) -> bool: ...


class Residency:
    """Eviction choices of one registry (module docstring).

    Args:
        pinned: ``name`` or ``name@version`` references never evicted.
        active: the store's active version of a name (in-memory index; pins follow it).
        budget_bytes: target device bytes of resident (or loading) versions; None: no target.
        count_limit: target number of resident (or loading) versions; None: no target.
        policy: the eviction order (LRU when not given); the registry keeps it told of every
            version admitted, used and dropped.
    """

    def __init__(
        self,
        pinned: Iterable[str],
        active: Callable[[str], int | None],
        *,
        budget_bytes: int | None = None,
        count_limit: int | None = None,
        policy: EvictionPolicy | None = None,
    ) -> None:
        if count_limit is not None and count_limit < 1:
            raise ConfigError(f"resident_limit must be >= 1, got {count_limit}")
        if budget_bytes is not None and budget_bytes < 0:
            raise ConfigError(f"device_cache_bytes must be >= 0, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.count_limit = count_limit
        self.pinned = frozenset(pinned)
        self.policy: EvictionPolicy = policy if policy is not None else LruPolicy()
        self._active = active

    def is_pinned(self, entry: Resident) -> bool:
        if entry.id in self.pinned:
            return True
        return entry.name in self.pinned and self._active(entry.name) == entry.version

    def victim(
        self,
        entries: Mapping[str, Resident],
        *,
        stack: str | None = None,
        exclude: str | None = None,
    ) -> Resident | None:
        """The first ready version in the policy's order that is idle and unpinned (of
        ``stack``), or None."""

        def evictable(key: str) -> bool:
            e = entries.get(key)
            return (
                e is not None
                and e.state == "ready"
                and e.leases == 0
                and e.id != exclude
                and (stack is None or e.stack == stack)
                and not self.is_pinned(e)
            )

        for key in self.policy.victims(evictable):
            return entries[key]
        return None

    def fits(self, count: int, nbytes: int) -> bool:
        """Whether ``count`` resident versions of ``nbytes`` device bytes are within target."""
        if self.count_limit is not None and count > self.count_limit:
            return False
        return self.budget_bytes is None or nbytes <= self.budget_bytes

    def over_limit(
        self,
        entries: Mapping[str, Resident],
        count: int,
        nbytes: int,
        *,
        room_for: int = 0,
        room_bytes: int = 0,
    ) -> Resident | None:
        """The next version to evict so ``room_for`` more versions of ``room_bytes`` fit beside
        ``count`` resident ones of ``nbytes`` (loading ones count from the start of their load);
        None when they fit, or when every resident version is leased or pinned (stay above)."""
        if self.fits(count + room_for, nbytes + room_bytes):
            return None
        return self.victim(entries)
