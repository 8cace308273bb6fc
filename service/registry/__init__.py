"""AdapterRegistry: which adapter versions are resident in the engine's bank, and why.

vLLM's ``LoRAModelManager`` role: resolves what a request names (``esc50``: the store's
active version; ``esc50@3``: that version) to a bank adapter id ``"esc50@3"``, loads it on demand,
and keeps what is resident within the device tier's budget in bytes (and an optional count),
evicting in the eviction policy's order (:mod:`service.residency`).

Tiers (docs/many-adapters.md): the **device** tier is the bank (what batches read); below it the
**host** tier (:class:`~service.tiers.host_cache.HostCache`) keeps validated, packed adapters in
host memory (pinned on CUDA) within its own byte budget, so a reload is one copy with no disk
read and no validation; below that, the store on disk.

Rules:

- A request holds a :class:`~service.registry.leases.Lease` on the version it was admitted with
  (:meth:`admit` or :meth:`acquire`) until its answer is built; a leased version is never
  evicted or unloaded (:mod:`service.registry.leases`).
- Load on demand: :meth:`admit` leases at once and hands back the load's future (the request's
  rows wait for it in the engine's queue, parked, within the request's time; others flow);
  :meth:`acquire` waits for the load. Loader threads (``max_loading_adapters``) read and validate
  (or take the host copy); the engine copies it into a slot at the next batch boundary. Past
  ``max_pending_loads`` loads in progress, another cold version gets 503 at once.
- Validate once: an upload activated at once (``upload(..., activate=True)``) is loaded from the
  :class:`AdapterCheckpoint` the store validated in memory, not read back and validated again,
  and the bank skips its own finite scan for every checkpoint handed over here (each is a
  :class:`~lookaside.checkpoint.ValidatedCheckpoint` from ``store.put`` or ``store.load``).
- What stays resident (the device budget, a full stack, pins) is decided by one policy,
  :mod:`service.residency`. A deleted version is dropped from the host tier too.
- Hot swap (:meth:`activate`): the new version is loaded first, then the store's pointer flips.
  The previous version stays resident (idle, so first in line for eviction) until evicted.
- States per version (:mod:`service.registry.active`): ``unloaded`` | ``loading`` | ``ready`` |
  ``failed`` (with the reason). A failed load is retried by the next request for that version.

The pieces: :mod:`~service.registry.refs`, :mod:`~service.registry.active` (versions, leases,
counters), :mod:`~service.registry.leases`, :mod:`service.residency`,
:mod:`~service.registry.loader` (one load), :mod:`~service.registry.packing`. This module is the
facade the routes use; it re-exports their public names.

Threads and ownership:

- Event-loop thread: :meth:`admit`, :meth:`acquire`, :meth:`activate`, :meth:`upload`, deletes,
  :meth:`status`. Store writes are sent to worker threads (``asyncio.to_thread``).
- Loader threads (``adapter-load``, :mod:`service.registry.loader`): the host tier or
  :meth:`AdapterStore.load`, then ``engine.load_adapter`` (not waited on: its callback records
  the outcome). They never touch the event loop.
- Any thread: :meth:`Lease.release` (the engine thread may release a lease when it answers).
- The engine thread only runs the bank changes it was handed; it never calls the registry.
- The map's lock (:mod:`service.registry.active`) guards every entry, counter and the unload map; it
  is never held while waiting on I/O or on the engine.

Resolution (:meth:`resolve`, on every request) reads only the store's in-memory index: O(1), no
disk, whatever the number of names and versions.

Observability: :meth:`stats` gives counters (loads, evictions, failures per adapter name); a
:class:`RegistryEvents` hook object (the metrics module's) is told of each load, failure and
eviction; its exceptions are logged and swallowed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import replace

from lookaside.backbone import VisionTransformer
from lookaside.bank.packed import PackedAdapter
from lookaside.checkpoint import AdapterCheckpoint, AdapterManifest
from lookaside.errors import AdapterNotFound, ConfigError, InvalidCheckpoint
from service.backend import store_and_activate
from service.errors import RequestTimeout
from service.registry.active import (
    ActiveMap,
    AdapterUnavailable,
    EngineAdapters,
    Entry,
    RegistryEvents,
    RegistryStats,
    VersionStatus,
)
from service.registry.leases import Admission, Lease
from service.registry.loader import RegistryLoader
from service.registry.packing import AdapterPacking, device_bytes_of
from service.registry.refs import adapter_id, parse_ref, resolve_stored
from service.residency import AdapterState, Residency
from service.store import AdapterStore, PutResult
from service.tiers.host_cache import HostCache, TierStats
from service.tiers.policy import make_policy

__all__ = [
    "AdapterState",
    "AdapterUnavailable",
    "Admission",
    "AdapterRegistry",
    "EngineAdapters",
    "Lease",
    "RegistryEvents",
    "RegistryStats",
    "VersionStatus",
    "adapter_id",
    "parse_ref",
]

log = logging.getLogger("service.registry")


class AdapterRegistry:
    """Resident adapter versions of one engine, resolved from one store (module docstring)."""

    def __init__(
        self,
        store: AdapterStore,
        engine: EngineAdapters,
        *,
        backbone: VisionTransformer,
        resident_limit: int | None = None,
        device_budget_bytes: int | None = None,
        policy: str = "lru",
        host: HostCache[PackedAdapter] | None = None,
        packing: AdapterPacking | None = None,
        pinned: Iterable[str] = (),
        events: RegistryEvents | None = None,
        loader_threads: int = 2,
        max_pending_loads: int | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.backbone = backbone
        self.residency = Residency(
            pinned,
            store.active,
            budget_bytes=device_budget_bytes,
            count_limit=resident_limit,
            policy=make_policy(policy, device_budget_bytes or 0),
        )
        self._packing = packing
        self._active = ActiveMap(engine, self.residency, events)
        self._loader = RegistryLoader(
            store,
            engine,
            self._active,
            backbone=backbone,
            threads=loader_threads,
            max_pending=max_pending_loads,
            host=host,
            packing=packing,
        )

    @property
    def resident_limit(self) -> int | None:
        return self.residency.count_limit

    @property
    def host(self) -> HostCache[PackedAdapter] | None:
        """The host tier (None: off)."""
        return self._loader.host

    @property
    def pinned(self) -> frozenset[str]:
        return self.residency.pinned

    # -- resolution and leases -----------------------------------------------------------------
    def resolve(self, ref: str) -> tuple[str, int]:
        """``name`` / ``name@version`` -> (name, version) of a stored version (O(1), no disk).

        Raises:
            AdapterNotFound: unknown name, unknown version or no active version; the message
                lists what exists.
        """
        name, version = parse_ref(ref)
        if version is not None and self._active.ready(adapter_id(name, version)):
            return name, version  # resident and not deleted: no index lookup on the hot path
        return resolve_stored(self.store, ref)

    async def acquire(
        self,
        ref: str,
        *,
        count: bool = True,
        timeout: float | None = None,
        checkpoint: AdapterCheckpoint | None = None,
    ) -> Lease:
        """Resolve ``ref``, load it if needed (waiting for the load) and lease it.

        Args:
            ref: ``name`` or ``name@version``.
            count: count it as a request of that version (False for internal uses).
            timeout: most seconds to wait for a load (the request's remaining time); past it
                :class:`RequestTimeout` (504) is raised and the load goes on for later requests.
            checkpoint: ``ref``'s version already validated in memory (an upload being
                activated): loaded from it instead of reading and validating the store's copy.

        Raises:
            AdapterNotFound: nothing stored matches ``ref``.
            AdapterUnavailable: it could not be loaded now (retry later).
            RequestTimeout: the load took longer than ``timeout``.
        """
        name, version = self.resolve(ref)
        if checkpoint is not None and checkpoint.manifest.id != adapter_id(name, version):
            raise ConfigError(f"checkpoint {checkpoint.manifest.id} handed in for {ref!r}")
        entry = self._lease(name, version, count=count, checkpoint=checkpoint)
        hit, done = entry.state == "ready", entry.done
        waiter: asyncio.Future[AdapterManifest] | None = None
        try:
            if done.done() and not done.cancelled() and done.exception() is None:
                manifest = done.result()  # resident: no wait, no timer (the hot path)
            else:
                # shield: a waiter cancelled (client gone, timeout) must not cancel the shared load
                waiter = asyncio.wrap_future(done)
                manifest = await asyncio.wait_for(
                    asyncio.shield(waiter), None if timeout is None else max(timeout, 0.0)
                )
        except TimeoutError:
            if waiter is not None:  # nobody awaits the load now: retrieve its outcome, quietly
                waiter.add_done_callback(_retrieve)
            self._active.release(entry.id, entry)
            raise RequestTimeout(
                f"adapter {adapter_id(name, version)} was still loading when the request "
                "timed out; retry shortly (the load goes on) or raise LOOKASIDE_REQUEST_TIMEOUT_S"
            ) from None
        except BaseException:  # failed load, or the request was cancelled while waiting
            self._active.release(entry.id, entry)
            raise
        return Lease(self._releaser(entry), manifest, tier="device" if hit else entry.source)

    def admit(self, ref: str) -> Admission:
        """Resolve ``ref`` and lease it now, without waiting for a load (event loop).

        The lease's manifest comes from the store's index; ``ready`` is None for a resident
        version, else the load's future (published, or its error): rows submitted with it wait
        in the engine's queue without holding back other adapters' rows, so a cold request's
        featurizing and queueing overlap its load. Refusals come at once: 404 (what exists),
        503 (``cold_overload``, deleted, larger than the device tier).
        """
        name, version = self.resolve(ref)
        try:
            manifest = self.store.manifest(name, version)
        except InvalidCheckpoint as exc:
            raise AdapterUnavailable(
                f"adapter {adapter_id(name, version)} could not be loaded: {exc}"
            ) from exc
        entry = self._lease(name, version, count=True)
        done = entry.done
        if done.done() and not done.cancelled() and done.exception() is None:
            return Admission(Lease(self._releaser(entry), manifest), None)
        lease = Lease(self._releaser(entry), manifest, tier="loading")

        def landed(_: Future[AdapterManifest]) -> None:
            lease.tier = entry.source

        done.add_done_callback(landed)
        return Admission(lease, done)

    def _releaser(self, entry: Entry) -> Callable[[str], None]:
        """What a lease on ``entry`` calls when released (bound to that entry, not to its id:
        a failed entry replaced by a new load of the same version keeps its own count)."""
        return lambda aid: self._active.release(aid, entry)

    def acquire_blocking(self, ref: str, *, timeout: float | None = None) -> Lease:
        """:meth:`acquire` for code on a plain thread (never call it on the event loop)."""
        name, version = self.resolve(ref)
        entry = self._lease(name, version, count=True)
        try:
            manifest = entry.done.result(timeout)
        except BaseException:
            self._active.release(entry.id, entry)
            raise
        return Lease(self._releaser(entry), manifest)

    def _lease(
        self,
        name: str,
        version: int,
        *,
        count: bool,
        checkpoint: AdapterCheckpoint | None = None,
    ) -> Entry:
        """Take a lease on ``name@version`` (starting its load if needed); its entry."""
        return self._active.lease(
            name,
            version,
            count=count,
            load=lambda entry: self._loader.start(entry, checkpoint),
            device_bytes=lambda: device_bytes_of(
                self._packing, checkpoint.manifest if checkpoint else self.store, name, version
            ),
        )

    # -- management (event loop) -------------------------------------------------------------
    async def upload(
        self, manifest_bytes: bytes, weights_bytes: bytes, *, activate: bool = False
    ) -> PutResult:
        """Store an upload (validated first); with ``activate``, load it and make it live.

        With ``activate`` the answer means servable: the version is resident (loaded from the
        upload's validated tensors in memory, not read back and validated again) and active,
        including a first version that the store made active on its own.
        """
        return await store_and_activate(
            self, self.backbone, manifest_bytes, weights_bytes, activate=activate
        )

    async def activate(
        self, name: str, version: int, *, checkpoint: AdapterCheckpoint | None = None
    ) -> None:
        """Hot swap: load ``name@version``, then flip the store's pointer to it.

        Requests admitted before the flip finish on the version they hold; the old version stays
        resident (idle) until evicted. If the load fails, the pointer does not move.
        ``checkpoint``: that version already validated in memory (see :meth:`acquire`).
        """
        if not self.store.has_version(name, version):
            raise AdapterNotFound(
                f"unknown adapter '{name}@{version}'; {self.store.describe(name)}"
            )
        lease = await self.acquire(adapter_id(name, version), count=False, checkpoint=checkpoint)
        try:
            if self.store.active(name) != version:  # a pointer write is two fsyncs
                await asyncio.to_thread(self.store.activate, name, version)
        finally:
            lease.release()
        log.info("activated %s@%d", name, version)

    async def delete_version(self, name: str, version: int, *, force: bool = False) -> int | None:
        """Delete one stored version and return the active one afterwards.

        An idle version is unloaded before this returns; one that requests still hold is
        unloaded when the last of them releases it.
        """
        active = await asyncio.to_thread(self.store.delete_version, name, version, force=force)
        await self._retire(adapter_id(name, version))
        return active

    async def delete(self, name: str) -> list[int]:
        """Delete every version of ``name``; each is unloaded once no request holds it."""
        versions = await asyncio.to_thread(self.store.delete, name)
        for version in versions:
            await self._retire(adapter_id(name, version))
        return versions

    async def retire_deleted(self, names: Iterable[str]) -> list[str]:
        """Unload the versions of ``names`` that the store no longer holds (another process
        deleted them; a shared store's journal said so), as :meth:`delete_version` would."""
        wanted = set(names)
        gone = []
        for aid in self.resident():
            name, _, version = aid.partition("@")
            if name in wanted and not self.store.has_version(name, int(version)):
                gone.append(aid)
                await self._retire(aid)
        return gone

    async def _retire(self, aid: str) -> None:
        """Unload a deleted version now if no request holds it (waiting for the engine), else
        mark it so the last lease's release unloads it."""
        unloaded: Future[None] | None = self._active.retire(aid)
        host = self._loader.host
        if host is not None:  # after the mark: a load in progress sees it and drops its copy
            host.discard(aid)
        if unloaded is not None:
            try:
                await asyncio.wrap_future(unloaded)
            except Exception as exc:  # the store change stands; the slot stays until restart
                log.error("unloading deleted %s failed: %s", aid, exc)

    async def preload(self, limit: int | None = None) -> list[str]:
        """Startup: load active versions (pinned names first) while the device tier has room,
        at most ``limit`` of them (None: no count).

        A version that fails to load is logged and left ``failed``; the others still load.
        Returns the ids now resident.
        """
        names = self.store.names()
        names.sort(key=lambda n: n not in self.pinned)
        loaded: list[str] = []
        for name in names:
            if limit is not None and len(loaded) >= limit:
                break
            version = self.store.active(name)
            if version is None:
                continue
            count, nbytes = self._active.resident_bytes()
            more = device_bytes_of(self._packing, self.store, name, version)
            if not self.residency.fits(count + 1, nbytes + more):
                break  # the next one would evict what was just preloaded
            try:
                lease = await self.acquire(adapter_id(name, version), count=False)
            except (AdapterNotFound, AdapterUnavailable) as exc:
                log.warning("preloading %s@%d failed: %s", name, version, exc)
                continue
            lease.release()
            loaded.append(lease.adapter_id)
        return loaded

    def close(self) -> None:
        """Stop the loader threads (loads in progress are abandoned)."""
        self._loader.close()

    # -- observation ---------------------------------------------------------------------------
    def status(self, name: str) -> list[VersionStatus]:
        """Every stored version of ``name`` with its residency state (``[]`` if unknown);
        O(versions), from the store's index."""
        stored = self.store.get(name)
        if stored is None:
            return []
        pinned_version = stored.active if name in self.pinned else None
        out = self._active.status(name, list(stored.versions), pinned_version)
        host = self._loader.host
        if host is None:
            return out
        return [
            replace(s, tier="host") if s.tier == "disk" and f"{name}@{s.version}" in host else s
            for s in out
        ]

    def resident(self) -> list[str]:
        """Ids of the versions resident or loading, least recently used first."""
        return self._active.resident()

    def stats(self) -> RegistryStats:
        """Counters for metrics (a consistent snapshot)."""
        return self._active.stats()

    def tier_stats(self, device_allocated: int | None = None) -> dict[str, TierStats]:
        """Hits, misses, evictions and bytes per tier (``device``, and ``host`` when on);
        ``device_allocated``: the bank's allocated bytes, when the caller has them."""
        out = {"device": self._active.device_tier(device_allocated)}
        host = self._loader.host
        if host is not None:
            out["host"] = host.stats()
        return out

    @property
    def loads_in_progress(self) -> int:
        """Loads started and not finished (bounded by ``max_pending_loads``)."""
        return self._loader.in_progress


def _retrieve(future: asyncio.Future[AdapterManifest]) -> None:
    """Mark a load's outcome as seen (a failed load nobody waits for is not an asyncio error:
    the registry already records it as the version's ``failed`` state)."""
    if not future.cancelled():
        future.exception()
