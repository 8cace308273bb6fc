"""The registry's in-memory map: which versions are loading, ready or failed, their leases, and
the counters metrics read.

States per version: ``unloaded`` (no entry) | ``loading`` | ``ready`` | ``failed`` (with the
reason). A failed load is retried by the next request for that version; a deleted (``retired``)
version is unloaded as soon as its last lease is released. What to evict is decided by
:mod:`service.residency`; this map carries it out (``engine.unload_adapter``, enqueue
only).

Threads: every method takes :attr:`ActiveMap.lock` (a ``threading.RLock``: the done-callback of an
already finished unload future runs at once and re-enters it) and may run on the event loop, a
registry loader thread (``adapter-load``) or any thread releasing a lease. The lock is never held
while waiting on I/O or on the engine: calls made under it only enqueue
(``engine.unload_adapter``, the loader pool) or read the store's in-memory index (the active
version, for pins). :class:`RegistryEvents` hooks run outside it, on the thread that changed the
state.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from lookaside.checkpoint import AdapterManifest
from lookaside.errors import AdapterNotFound
from service.errors import AdapterUnavailable
from service.registry.refs import adapter_id
from service.registry.types import EngineAdapters, RegistryEvents, RegistryStats, VersionStatus
from service.residency import AdapterState, Residency
from service.tiers.host_cache import TierStats

__all__ = [
    "ActiveMap",
    "AdapterUnavailable",
    "EngineAdapters",
    "Entry",
    "RegistryEvents",
    "RegistryStats",
    "VersionStatus",
]

log = logging.getLogger("service.registry")


@dataclass
class Entry:
    """One version the registry has loaded, is loading, or failed to load."""

    name: str
    version: int
    state: AdapterState
    done: Future[AdapterManifest]
    leases: int = 0
    last_used: int = 0
    reason: str | None = None
    manifest: AdapterManifest | None = None
    load_seconds: float | None = None
    retired: bool = False
    """Deleted from the store: unloaded as soon as its last lease is released."""
    stack: str | None = field(default=None)
    device_bytes: int = 0
    """Device bytes once loaded (by arithmetic from the manifest, before the load)."""
    source: str = "disk"
    """Where its last load read it from: ``host`` (the host tier) or ``disk``."""

    @property
    def id(self) -> str:
        return adapter_id(self.name, self.version)

    @property
    def resident(self) -> bool:
        return self.state in ("loading", "ready")


class ActiveMap:
    """Entries by adapter id, their leases and counters (module docstring)."""

    def __init__(
        self, engine: EngineAdapters, residency: Residency, events: RegistryEvents | None
    ) -> None:
        self.engine = engine
        self.residency = residency
        self._events = events
        self.lock = threading.RLock()  # re-entered by done-callbacks of finished futures
        self.entries: dict[str, Entry] = {}
        self._unloading: dict[str, Future[None]] = {}
        self._clock = itertools.count(1)
        self._requests: Counter[str] = Counter()
        self._loads: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._evictions: Counter[str] = Counter()
        self._count = 0
        """Resident (loading or ready) entries, and their device bytes (``_bytes``)."""
        self._bytes = 0
        self._loading_bytes = 0
        self.hits = 0
        """Leases that found their version ready on the device (the device tier's hits)."""
        self.misses = 0
        """Leases that did not find their version ready: they started or joined a load."""
        self.evicted = 0

    def ready(self, aid: str) -> bool:
        """Resident and not deleted (resolution then needs no store lookup)."""
        entry = self.entries.get(aid)
        return entry is not None and entry.state == "ready" and not entry.retired

    def lease(
        self,
        name: str,
        version: int,
        *,
        count: bool,
        load: Callable[[Entry], None],
        device_bytes: Callable[[], int] = lambda: 0,
    ) -> Entry:
        """Take a lease on ``name@version``, starting its load (``load``, which only enqueues,
        or raises :class:`AdapterUnavailable` when too many loads wait) when it is unloaded or
        failed; returns its entry (``entry.done``: its readiness).

        ``device_bytes``: the version's device bytes (arithmetic from its manifest), asked only
        when a load starts: idle versions are evicted first until it fits the device budget."""
        aid = adapter_id(name, version)
        with self.lock:
            entry = self.entries.get(aid)
            if entry is not None and entry.retired:
                raise AdapterUnavailable(
                    f"{aid} was deleted and is being unloaded; retry in a moment"
                )
            if entry is None or entry.state == "failed":
                fresh = Entry(
                    name=name,
                    version=version,
                    state="loading",
                    done=Future(),
                    device_bytes=device_bytes(),
                )
                budget = self.residency.budget_bytes
                if budget is not None and fresh.device_bytes > budget:  # evicting cannot help
                    raise AdapterUnavailable(
                        f"adapter {aid} needs {fresh.device_bytes} bytes on the device, more "
                        f"than the whole device tier ({budget} bytes); raise device_cache_bytes"
                    )
                load(fresh)  # first: a refused load (too many waiting) changes nothing
                if entry is not None:  # a failed version: keep its history visible until it works
                    fresh.reason = entry.reason
                    del self.entries[aid]
                self._shrink_locked(room_for=1, room_bytes=fresh.device_bytes)
                self.entries[aid] = entry = fresh
                self._count += 1
                self._bytes += fresh.device_bytes
                self._loading_bytes += fresh.device_bytes
                self.residency.policy.admit(aid, fresh.device_bytes)
                self.misses += 1
            elif entry.state == "ready":
                self.residency.policy.touch(aid)
                self.hits += 1
            else:  # joins a load in progress: not found resident either
                self.misses += 1
            entry.leases += 1
            entry.last_used = next(self._clock)
            if count:
                self._requests[aid] += 1
            return entry

    def release(self, aid: str, taken: Entry | None = None) -> None:
        """A lease given back (any thread): unload a retired version, or shrink to the limit.

        ``taken``: the entry the lease was taken on; a failed entry replaced by a new load of
        the same version since then only loses its lease (the new entry's count is not its)."""
        with self.lock:
            current = self.entries.get(aid)
            entry = taken if taken is not None else current
            if entry is None or entry.leases <= 0:
                log.error("lease of %s released more often than taken", aid)
                return
            entry.leases -= 1
            entry.last_used = next(self._clock)
            if entry.leases > 0 or entry is not current:
                return
            if entry.retired and entry.state == "ready":
                self._unload_locked(entry, evicted=False)
            elif entry.retired and entry.state == "failed":
                del self.entries[aid]
            else:
                self._shrink_locked()

    def loaded(self, entry: Entry, manifest: AdapterManifest, seconds: float) -> None:
        """The loader made ``entry`` resident: ready, counted, its waiters answered."""
        with self.lock:
            if entry.state == "loading":
                self._loading_bytes -= entry.device_bytes
            entry.state = "ready"
            entry.reason = None
            entry.manifest = manifest
            entry.load_seconds = seconds
            self._loads[entry.id] += 1
            if entry.retired and entry.leases == 0:
                self._unload_locked(entry, evicted=False)
        self._notify("adapter_loaded", entry.name, entry.version, seconds, tier=entry.source)
        log.info("loaded %s in %.3f s", entry.id, seconds)
        if not entry.done.done():
            entry.done.set_result(manifest)

    def failed(self, entry: Entry, exc: BaseException) -> None:
        """The loader failed ``entry``: ``failed`` with the reason, its waiters get a 503 (or
        the 404 / 503 it raised)."""
        reason = str(exc) or type(exc).__name__
        with self.lock:
            if entry.state == "loading":
                self._loading_bytes -= entry.device_bytes
            if entry.resident and self.entries.get(entry.id) is entry:
                self._count -= 1
                self._bytes -= entry.device_bytes
                self.residency.policy.discard(entry.id)
            entry.state = "failed"
            entry.reason = reason
            self._failures[entry.id] += 1
            if entry.retired and entry.leases == 0:
                del self.entries[entry.id]
        log.warning("loading %s failed: %s", entry.id, reason)
        self._notify("adapter_load_failed", entry.name, entry.version, reason)
        if entry.done.done():
            return
        if isinstance(exc, AdapterNotFound | AdapterUnavailable):
            entry.done.set_exception(exc)
        else:
            entry.done.set_exception(
                AdapterUnavailable(f"adapter {entry.id} could not be loaded: {reason}")
            )

    def unloading(self, aid: str) -> Future[None] | None:
        """The pending unload of ``aid`` (a load of the same id waits for it first)."""
        with self.lock:
            return self._unloading.get(aid)

    def evict_from_stack(self, entry: Entry) -> Future[None] | None:
        """Unload the residency policy's victim of ``entry``'s stack (the engine reported the
        stack full); None when every version of it is leased or pinned."""
        with self.lock:
            victim = self.residency.victim(self.entries, stack=entry.stack, exclude=entry.id)
            if victim is None:
                return None
            return self._unload_locked(self.entries[victim.id], evicted=True)

    def evict_any(self, entry: Entry) -> Future[None] | None:
        """Unload the residency policy's victim of any stack (none of ``entry``'s is idle: the
        engine frees a stack's bytes only once it is empty); None when nothing is idle."""
        with self.lock:
            victim = self.residency.victim(self.entries, exclude=entry.id)
            if victim is None:
                return None
            return self._unload_locked(self.entries[victim.id], evicted=True)

    def drop_orphan(self, entry: Entry) -> None:
        """The engine published ``entry`` after its load had been given up (failed): unload it,
        unless a newer entry of that version is ready (then it holds that slot). A newer load
        in progress that finds the id still published is handed over again once this unload is
        applied (:mod:`service.registry.loader`)."""
        with self.lock:
            current = self.entries.get(entry.id)
            if current is not None and current.state == "ready":
                return
            future = self.engine.unload_adapter(entry.id)
            self._unloading[entry.id] = future
            future.add_done_callback(lambda f: self._unloaded(entry.id, f))
        log.warning("%s was published after its load was given up; unloading it", entry.id)

    def retire(self, aid: str) -> Future[None] | None:
        """Mark a deleted version; unload it now if idle (returns that unload)."""
        with self.lock:
            entry = self.entries.get(aid)
            if entry is None:
                return None
            entry.retired = True
            if entry.leases == 0:
                if entry.state == "ready":
                    return self._unload_locked(entry, evicted=False)
                if entry.state == "failed":
                    del self.entries[aid]
        return None

    def _shrink_locked(self, room_for: int = 0, room_bytes: int = 0) -> None:
        """Evict what the residency policy names until ``room_for`` more versions of
        ``room_bytes`` fit the device tier's targets."""
        while True:
            victim = self.residency.over_limit(
                self.entries, self._count, self._bytes, room_for=room_for, room_bytes=room_bytes
            )
            if victim is None:
                return
            self._unload_locked(self.entries[victim.id], evicted=True)

    def _unload_locked(self, entry: Entry, *, evicted: bool) -> Future[None]:
        """Forget ``entry`` and ask the engine to unload it (enqueue only; never blocks)."""
        del self.entries[entry.id]
        if entry.resident:
            self._count -= 1
            self._bytes -= entry.device_bytes
        self.residency.policy.discard(entry.id, evicted=evicted)
        if evicted:
            self._evictions[entry.id] += 1
            self.evicted += 1
        future = self.engine.unload_adapter(entry.id)
        self._unloading[entry.id] = future
        aid = entry.id
        future.add_done_callback(lambda f: self._unloaded(aid, f))
        if evicted:
            self._notify("adapter_evicted", entry.name, entry.version)
        return future

    def _unloaded(self, aid: str, future: Future[None]) -> None:
        with self.lock:
            if self._unloading.get(aid) is future:
                del self._unloading[aid]
        if future.exception() is not None:
            log.error("unloading %s failed: %s", aid, future.exception())

    # -- observation ---------------------------------------------------------------------------
    def status(
        self, name: str, versions: list[int], pinned_version: int | None
    ) -> list[VersionStatus]:
        """Each of ``versions`` of ``name`` with its residency state."""
        with self.lock:
            out = []
            for version in versions:
                aid = adapter_id(name, version)
                entry = self.entries.get(aid)
                out.append(
                    VersionStatus(
                        version=version,
                        state=entry.state if entry is not None else "unloaded",
                        reason=entry.reason if entry is not None else None,
                        resident=entry is not None and entry.resident,
                        pinned=aid in self.residency.pinned or pinned_version == version,
                        in_flight=entry.leases if entry is not None else 0,
                        requests=self._requests[aid],
                        loads=self._loads[aid],
                        evictions=self._evictions[aid],
                        load_seconds=entry.load_seconds if entry is not None else None,
                        tier="device" if entry is not None and entry.resident else "disk",
                        device_bytes=entry.device_bytes if entry is not None else None,
                    )
                )
            return out

    def resident(self) -> list[str]:
        """Ids of the versions resident or loading, least recently used first."""
        with self.lock:
            entries = sorted(self.entries.values(), key=lambda e: e.last_used)
            return [e.id for e in entries if e.resident]

    def device_tier(self, allocated: int | None = None) -> TierStats:
        """The device tier as the registry sees it: hits and misses of leases, evictions, the
        bytes of resident versions (``allocated``: the bank's own count when given), and the
        bytes of versions still loading as in flight."""
        with self.lock:
            return TierStats(
                hits=self.hits,
                misses=self.misses,
                bypass=0,
                evictions=self.evicted,
                bytes=self._bytes if allocated is None else allocated,
                inflight=self._loading_bytes,
                budget=self.residency.budget_bytes or 0,
                entries=self._count,
            )

    def resident_bytes(self) -> tuple[int, int]:
        """(versions, device bytes) resident or loading."""
        with self.lock:
            return self._count, self._bytes

    def stats(self) -> RegistryStats:
        """Counters for metrics (a consistent snapshot)."""
        with self.lock:
            return RegistryStats(
                resident=sum(1 for e in self.entries.values() if e.resident),
                loads=_by_name(self._loads),
                load_failures=_by_name(self._failures),
                evictions=_by_name(self._evictions),
                requests=_by_name(self._requests),
            )

    def _notify(self, event: str, *args: object, **kwargs: object) -> None:
        if self._events is None:
            return
        try:
            getattr(self._events, event)(*args, **kwargs)
        except Exception:  # a metrics hook must never fail a load
            log.exception("registry event hook %s failed", event)


def _by_name(counts: Counter[str]) -> dict[str, int]:
    """Counts keyed by ``name@version`` summed per name (metrics label adapters by name)."""
    out: Counter[str] = Counter()
    for aid, n in counts.items():
        out[aid.partition("@")[0]] += n
    return dict(out)
