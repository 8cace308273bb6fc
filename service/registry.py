"""AdapterRegistry: which adapter versions are resident in the engine's bank, and why.

vLLM's ``LoRAModelManager`` role: resolves what a request names (``esc50``: the store's
active version; ``esc50@3``: that version) to a bank adapter id ``"esc50@3"``, loads it on demand,
and keeps at most ``resident_limit`` versions resident, evicting the least recently used one.

Rules:

- A request holds a :class:`Lease` on the version it was admitted with, from before it is queued
  until its answer is built (``lease = await registry.acquire(ref)`` ... ``lease.release()``).
  A leased version is never evicted or unloaded, so a hot swap or a delete never pulls an adapter
  from under queued or running rows; the request finishes on the version it started with.
- Load on demand: a request for a non-resident version waits for its load, at most its remaining
  request time (then 504; the load goes on for later requests); requests for other adapters keep
  flowing. Reading and validating the checkpoint (disk, sha256, header, host tensors) runs on the
  registry's loader threads; the engine then copies the host tensors into a free slot between
  batches (``engine.load_adapter``).
- Validate once: an upload activated at once (``upload(..., activate=True)``) is loaded from the
  :class:`AdapterCheckpoint` the store validated in memory, not read back and validated again,
  and the bank skips its own finite scan for every checkpoint handed over here (each is a
  :class:`~lookaside.checkpoint.ValidatedCheckpoint` from ``store.put`` or ``store.load``).
- The resident limit is a target: when every resident version is leased or pinned, a load goes
  ahead above the limit and the registry evicts back down as leases are released. If the bank
  itself has no free slot (:class:`BankFull`), an idle version of the same stack is evicted and
  the load retried; if none is idle, the load fails with a 503 and Retry-After.
- Pinned adapters (``name``: its active version; or ``name@version``) are never evicted.
- Hot swap (:meth:`activate`): the new version is loaded first, then the store's pointer flips.
  The previous version stays resident (idle, so first in line for eviction) until evicted.
- States per version: ``unloaded`` | ``loading`` | ``ready`` | ``failed`` (with the reason). A
  failed load is retried by the next request for that version.

Threads and ownership:

- Event-loop thread: :meth:`acquire`, :meth:`activate`, :meth:`upload`, the deletes,
  :meth:`status`. Store writes are sent to worker threads (``asyncio.to_thread``).
- Loader threads (a small pool owned by the registry): :meth:`AdapterStore.load` and the wait on
  ``engine.load_adapter``'s future (given up once the engine reports itself dead). They never
  touch the event loop.
- Any thread: :meth:`Lease.release` (the engine thread may release a lease when it answers).
- The engine thread only runs the bank changes it was handed; it never calls the registry.
- ``self._lock`` (a ``threading.RLock``: the done-callback of an already finished future runs at
  once and re-enters it) guards every entry, counter and the unload map. It is never held while
  waiting on I/O or on the engine: calls made under it only enqueue (``engine.unload_adapter``)
  or read the store's in-memory index (the active version, for pins).

Resolution (:meth:`resolve`, on every request) reads only the store's in-memory index: O(1), no
disk, whatever the number of names and versions.

Observability: :meth:`stats` gives counters (loads, evictions, failures per adapter name); a
:class:`RegistryEvents` hook object (the metrics module's) is told of each load, failure and
eviction; its exceptions are logged and swallowed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from typing import Literal, Protocol

from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import AdapterCheckpoint, AdapterManifest
from lookaside.errors import AdapterNotFound, BankFull
from service.errors import RequestTimeout, ServiceError
from service.store import NAME_PATTERN, AdapterStore, PutResult, format_versions
from service.watchdog import EngineHealth

__all__ = [
    "AdapterState",
    "AdapterUnavailable",
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

_WAIT_SLICE_S = 0.5
"""How often a loader thread waiting on the engine checks whether the engine is dead."""

AdapterState = Literal["unloaded", "loading", "ready", "failed"]


class AdapterUnavailable(ServiceError):
    """A stored adapter version could not be made resident now (HTTP 503, retry later)."""

    status_code = 503
    retry_after = True


class EngineAdapters(Protocol):
    """What the registry needs of the engine (``service.engine.Engine`` provides it)."""

    def load_adapter(self, checkpoint: AdapterCheckpoint) -> Future[None]:
        """Copy a checkpoint into a free bank slot between batches; id ``name@version``.

        A :class:`~lookaside.checkpoint.ValidatedCheckpoint` skips the bank's finite scan (its
        every value was already scanned). The future fails with :class:`BankFull` only from an
        engine whose stacks cannot grow (``service.residency``).
        """
        ...

    def unload_adapter(self, adapter_id: str) -> Future[None]:
        """Remove an adapter from the bank between batches (its slot is zeroed and reused)."""
        ...

    def health(self) -> EngineHealth:
        """Whether the engine is stalled or dead (bounds the registry's waits on it)."""
        ...


class RegistryEvents(Protocol):
    """Observer of residency changes (metrics). Called on loader threads or the event loop."""

    def adapter_loaded(self, name: str, version: int, seconds: float) -> None:
        """``name@version`` became resident after ``seconds`` (read + validate + copy)."""
        ...

    def adapter_load_failed(self, name: str, version: int, reason: str) -> None:
        """A load of ``name@version`` failed."""
        ...

    def adapter_evicted(self, name: str, version: int) -> None:
        """``name@version`` was unloaded to make room (not for a delete)."""
        ...


def adapter_id(name: str, version: int) -> str:
    """The bank id of a stored version: ``name@version``."""
    return f"{name}@{version}"


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"esc50"`` -> ``("esc50", None)``; ``"esc50@3"`` or ``"esc50@v3"`` -> ``("esc50", 3)``.

    Raises:
        AdapterNotFound: the reference is malformed (the message shows the accepted forms).
    """
    name, sep, version = ref.strip().partition("@")
    number = version[1:] if version[:1] in ("v", "V") else version
    if not NAME_PATTERN.fullmatch(name) or (sep and not (number.isdigit() and int(number) > 0)):
        raise AdapterNotFound(
            f"adapter reference {ref!r} is malformed: use 'name' (its active version) or "
            "'name@version' (e.g. 'esc50@3'); names are 1-64 lower-case letters, digits, '-', '_'"
        )
    return name, (int(number) if sep else None)


@dataclass(frozen=True)
class VersionStatus:
    """One stored version as the registry sees it (``GET /adapters/{name}``)."""

    version: int
    state: AdapterState
    reason: str | None
    resident: bool
    pinned: bool
    in_flight: int
    """Leases held now: requests queued or running on this version."""
    requests: int
    """Requests admitted for this version since the server started."""
    loads: int
    evictions: int
    load_seconds: float | None
    """Duration of the last successful load."""


@dataclass(frozen=True)
class RegistryStats:
    """Counters for metrics, all since the registry was created."""

    resident: int
    loads: dict[str, int]
    """Successful loads by adapter name."""
    load_failures: dict[str, int]
    evictions: dict[str, int]
    requests: dict[str, int]
    """Requests admitted by adapter name."""


class Lease:
    """A request's hold on one resident version; release it once (idempotent) when answered."""

    def __init__(self, registry: AdapterRegistry, manifest: AdapterManifest) -> None:
        self._registry = registry
        self.manifest = manifest
        """The version's manifest (labels, features, head) as stored."""
        self._released = False
        self._lock = threading.Lock()

    @property
    def adapter_id(self) -> str:
        """Bank id to route rows to: ``name@version``."""
        return self.manifest.id

    @property
    def name(self) -> str:
        """Adapter name."""
        return self.manifest.name

    @property
    def version(self) -> int:
        """The version this request is served by (named in its response)."""
        return self.manifest.version

    def release(self) -> None:
        """Give the version back; from any thread; later calls do nothing."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._registry._release(self.adapter_id)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lease({self.adapter_id!r}, released={self._released})"


@dataclass
class _Entry:
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

    @property
    def id(self) -> str:
        return adapter_id(self.name, self.version)

    @property
    def resident(self) -> bool:
        return self.state in ("loading", "ready")


class AdapterRegistry:
    """Resident adapter versions of one engine, resolved from one store (module docstring)."""

    def __init__(
        self,
        store: AdapterStore,
        engine: EngineAdapters,
        *,
        backbone: VisionTransformer,
        resident_limit: int,
        pinned: Iterable[str] = (),
        events: RegistryEvents | None = None,
        loader_threads: int = 2,
    ) -> None:
        if resident_limit < 1:
            raise ValueError(f"resident_limit must be >= 1, got {resident_limit}")
        self.store = store
        self.engine = engine
        self.backbone = backbone
        self.resident_limit = resident_limit
        self.pinned = frozenset(pinned)
        self._events = events
        self._pool = ThreadPoolExecutor(
            max_workers=loader_threads, thread_name_prefix="adapter-load"
        )
        self._lock = threading.RLock()  # re-entered by done-callbacks of finished futures
        self._entries: dict[str, _Entry] = {}
        self._unloading: dict[str, Future[None]] = {}
        self._clock = itertools.count(1)
        self._requests: Counter[str] = Counter()
        self._loads: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._evictions: Counter[str] = Counter()

    # -- resolution and leases -----------------------------------------------------------------
    def resolve(self, ref: str) -> tuple[str, int]:
        """``name`` / ``name@version`` -> (name, version) of a stored version (O(1), no disk).

        Raises:
            AdapterNotFound: unknown name, unknown version or no active version; the message
                lists what exists.
        """
        name, version = parse_ref(ref)
        if version is not None:
            entry = self._entries.get(adapter_id(name, version))
            if entry is not None and entry.state == "ready" and not entry.retired:
                return name, version  # resident and not deleted: no disk read on the hot path
            if self.store.has_version(name, version):
                return name, version
            raise AdapterNotFound(f"unknown adapter {ref.strip()!r}; {self.store.describe(name)}")
        stored = self.store.get(name)
        if stored is not None and stored.active is not None:
            return name, stored.active
        if stored is not None:
            raise AdapterNotFound(
                f"adapter {name!r} has no active version; activate one of "
                f"{format_versions(list(stored.versions), None)} or ask for 'name@version'"
            )
        raise AdapterNotFound(f"unknown adapter {name!r}; {self.store.describe(name)}")

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
            raise ValueError(f"checkpoint {checkpoint.manifest.id} handed in for {ref!r}")
        done = self._lease(name, version, count=count, checkpoint=checkpoint)
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
            self._release(adapter_id(name, version))
            raise RequestTimeout(
                f"adapter {adapter_id(name, version)} was still loading when the request "
                "timed out; retry shortly (the load goes on) or raise LOOKASIDE_REQUEST_TIMEOUT_S"
            ) from None
        except BaseException:  # failed load, or the request was cancelled while waiting
            self._release(adapter_id(name, version))
            raise
        return Lease(self, manifest)

    def acquire_blocking(self, ref: str, *, timeout: float | None = None) -> Lease:
        """:meth:`acquire` for code on a plain thread (never call it on the event loop)."""
        name, version = self.resolve(ref)
        done = self._lease(name, version, count=True)
        try:
            manifest = done.result(timeout)
        except BaseException:
            self._release(adapter_id(name, version))
            raise
        return Lease(self, manifest)

    def _lease(
        self,
        name: str,
        version: int,
        *,
        count: bool,
        checkpoint: AdapterCheckpoint | None = None,
    ) -> Future[AdapterManifest]:
        """Take a lease on ``name@version`` (starting its load if needed); its readiness."""
        aid = adapter_id(name, version)
        with self._lock:
            entry = self._entries.get(aid)
            if entry is not None and entry.retired:
                raise AdapterUnavailable(
                    f"{aid} was deleted and is being unloaded; retry in a moment"
                )
            if entry is None or entry.state == "failed":
                entry = self._start_load_locked(name, version, entry, checkpoint)
            entry.leases += 1
            entry.last_used = next(self._clock)
            if count:
                self._requests[aid] += 1
            return entry.done

    def _release(self, aid: str) -> None:
        with self._lock:
            entry = self._entries.get(aid)
            if entry is None or entry.leases <= 0:
                log.error("lease of %s released more often than taken", aid)
                return
            entry.leases -= 1
            entry.last_used = next(self._clock)
            if entry.leases > 0:
                return
            if entry.retired and entry.state == "ready":
                self._unload_locked(entry, evicted=False)
            elif entry.retired and entry.state == "failed":
                del self._entries[aid]
            else:
                self._shrink_locked()

    # -- loading -------------------------------------------------------------------------------
    def _start_load_locked(
        self,
        name: str,
        version: int,
        old: _Entry | None,
        checkpoint: AdapterCheckpoint | None = None,
    ) -> _Entry:
        entry = _Entry(name=name, version=version, state="loading", done=Future())
        if old is not None:  # a failed version: keep its history visible until it succeeds
            entry.reason = old.reason
            del self._entries[old.id]
        self._shrink_locked(room_for=1)
        self._entries[entry.id] = entry
        self._pool.submit(self._load, entry, checkpoint)
        return entry

    def _load(self, entry: _Entry, given: AdapterCheckpoint | None = None) -> None:
        """Loader thread: read + validate the checkpoint (unless ``given``, validated by the
        upload that is being activated), then hand it to the engine."""
        start = time.perf_counter()
        try:
            with self._lock:
                pending = self._unloading.get(entry.id)
            if pending is not None:  # the same id is still being unloaded: let it finish first
                self._wait(pending, entry.id)
            ckpt = given or self.store.load(entry.name, entry.version, backbone=self.backbone)
            entry.stack = _stack_key(ckpt.manifest)
            self._load_into_engine(entry, ckpt)
        except BaseException as exc:
            self._load_failed(entry, exc)
            return
        seconds = time.perf_counter() - start
        with self._lock:
            entry.state = "ready"
            entry.reason = None
            entry.manifest = ckpt.manifest
            entry.load_seconds = seconds
            self._loads[entry.id] += 1
            if entry.retired and entry.leases == 0:
                self._unload_locked(entry, evicted=False)
        self._notify("adapter_loaded", entry.name, entry.version, seconds)
        log.info("loaded %s in %.3f s", entry.id, seconds)
        if not entry.done.done():
            entry.done.set_result(ckpt.manifest)

    def _load_into_engine(self, entry: _Entry, ckpt: AdapterCheckpoint) -> None:
        """``engine.load_adapter``; on :class:`BankFull` evict an idle same-stack version, retry."""
        while True:
            try:
                # a ValidatedCheckpoint (store.put / store.load): the bank scans it no second time
                self._wait(self.engine.load_adapter(ckpt), entry.id)
                return
            except BankFull as exc:
                with self._lock:
                    victim = self._victim_locked(stack=entry.stack, exclude=entry.id)
                    if victim is None:
                        raise AdapterUnavailable(
                            f"no free slot for {entry.id} ({ckpt.manifest.method}): every "
                            "resident adapter of that method and config is in use or pinned; "
                            f"retry shortly or raise bank_capacity ({exc})"
                        ) from exc
                    unloaded = self._unload_locked(victim, evicted=True)
                self._wait(unloaded, entry.id)

    def _wait(self, future: Future[None], aid: str) -> None:
        """``future.result()``, bounded: a loader thread gives up once the engine reports itself
        dead (stuck past ``engine_dead_s``; liveness then restarts the process), instead of waiting
        on it for ever."""
        while True:
            try:
                future.result(timeout=_WAIT_SLICE_S)
                return
            except FuturesTimeout:
                health = self.engine.health()
                if health.dead:
                    raise AdapterUnavailable(
                        f"adapter {aid} could not be loaded: the engine is stuck "
                        f"({health.reason}); retry on another replica"
                    ) from None

    def _load_failed(self, entry: _Entry, exc: BaseException) -> None:
        reason = str(exc) or type(exc).__name__
        with self._lock:
            entry.state = "failed"
            entry.reason = reason
            self._failures[entry.id] += 1
            if entry.retired and entry.leases == 0:
                del self._entries[entry.id]
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

    # -- eviction ------------------------------------------------------------------------------
    def _is_pinned_locked(self, entry: _Entry) -> bool:
        if entry.id in self.pinned:
            return True
        return entry.name in self.pinned and self.store.active(entry.name) == entry.version

    def _victim_locked(
        self, *, stack: str | None = None, exclude: str | None = None
    ) -> _Entry | None:
        """The least recently used ready version that is idle and unpinned (of ``stack``)."""
        idle = [
            e
            for e in self._entries.values()
            if e.state == "ready"
            and e.leases == 0
            and e.id != exclude
            and (stack is None or e.stack == stack)
            and not self._is_pinned_locked(e)
        ]
        return min(idle, key=lambda e: e.last_used, default=None)

    def _shrink_locked(self, room_for: int = 0) -> None:
        """Evict idle versions until ``room_for`` more fit under the resident limit."""
        while self._resident_locked() + room_for > self.resident_limit:
            victim = self._victim_locked()
            if victim is None:
                return  # everything is leased or pinned: stay above the limit for now
            self._unload_locked(victim, evicted=True)

    def _resident_locked(self) -> int:
        # A version counts from the moment its load starts (so concurrent loads respect the limit).
        return sum(1 for e in self._entries.values() if e.resident)

    def _unload_locked(self, entry: _Entry, *, evicted: bool) -> Future[None]:
        """Forget ``entry`` and ask the engine to unload it (enqueue only; never blocks)."""
        del self._entries[entry.id]
        if evicted:
            self._evictions[entry.id] += 1
        future = self.engine.unload_adapter(entry.id)
        self._unloading[entry.id] = future
        aid = entry.id
        future.add_done_callback(lambda f: self._unloaded(aid, f))
        if evicted:
            self._notify("adapter_evicted", entry.name, entry.version)
        return future

    def _unloaded(self, aid: str, future: Future[None]) -> None:
        with self._lock:
            if self._unloading.get(aid) is future:
                del self._unloading[aid]
        if future.exception() is not None:
            log.error("unloading %s failed: %s", aid, future.exception())

    # -- management (event loop) -------------------------------------------------------------
    async def upload(
        self, manifest_bytes: bytes, weights_bytes: bytes, *, activate: bool = False
    ) -> PutResult:
        """Store an upload (validated first); with ``activate``, load it and make it live.

        With ``activate`` the answer means servable: the version is resident (loaded from the
        upload's validated tensors in memory, not read back and validated again) and active,
        including a first version that the store made active on its own.
        """
        result = await asyncio.to_thread(
            self.store.put, manifest_bytes, weights_bytes, backbone=self.backbone
        )
        if not activate:
            return result
        try:
            await self.activate(result.name, result.version, checkpoint=result.checkpoint)
        except AdapterUnavailable as exc:
            state = "active but not loaded" if result.active else "not activated"
            raise AdapterUnavailable(
                f"stored as {result.name}@{result.version} ({state}): {exc}; retry with "
                f"POST /adapters/{result.name}/activate"
            ) from exc
        return dataclasses.replace(result, active=True)

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

    async def _retire(self, aid: str) -> None:
        """Unload a deleted version now if no request holds it (waiting for the engine), else
        mark it so the last lease's release unloads it."""
        unloaded: Future[None] | None = None
        with self._lock:
            entry = self._entries.get(aid)
            if entry is None:
                return
            entry.retired = True
            if entry.leases == 0:
                if entry.state == "ready":
                    unloaded = self._unload_locked(entry, evicted=False)
                elif entry.state == "failed":
                    del self._entries[aid]
        if unloaded is not None:
            try:
                await asyncio.wrap_future(unloaded)
            except Exception as exc:  # the store change stands; the slot stays until restart
                log.error("unloading deleted %s failed: %s", aid, exc)

    async def preload(self) -> list[str]:
        """Startup: load active versions (pinned names first) up to the resident limit.

        A version that fails to load is logged and left ``failed``; the others still load.
        Returns the ids now resident.
        """
        names = self.store.names()
        names.sort(key=lambda n: n not in self.pinned)
        loaded: list[str] = []
        for name in names:
            if len(loaded) >= self.resident_limit:
                break
            version = self.store.active(name)
            if version is None:
                continue
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
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- observation ---------------------------------------------------------------------------
    def status(self, name: str) -> list[VersionStatus]:
        """Every stored version of ``name`` with its residency state (``[]`` if unknown);
        O(versions), from the store's index."""
        stored = self.store.get(name)
        if stored is None:
            return []
        versions = list(stored.versions)
        pinned_version = stored.active if name in self.pinned else None
        with self._lock:
            out = []
            for version in versions:
                aid = adapter_id(name, version)
                entry = self._entries.get(aid)
                out.append(
                    VersionStatus(
                        version=version,
                        state=entry.state if entry is not None else "unloaded",
                        reason=entry.reason if entry is not None else None,
                        resident=entry is not None and entry.resident,
                        pinned=aid in self.pinned or pinned_version == version,
                        in_flight=entry.leases if entry is not None else 0,
                        requests=self._requests[aid],
                        loads=self._loads[aid],
                        evictions=self._evictions[aid],
                        load_seconds=entry.load_seconds if entry is not None else None,
                    )
                )
            return out

    def resident(self) -> list[str]:
        """Ids of the versions resident or loading, least recently used first."""
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: e.last_used)
            return [e.id for e in entries if e.resident]

    def stats(self) -> RegistryStats:
        """Counters for metrics (a consistent snapshot)."""
        with self._lock:
            return RegistryStats(
                resident=self._resident_locked(),
                loads=_by_name(self._loads),
                load_failures=_by_name(self._failures),
                evictions=_by_name(self._evictions),
                requests=_by_name(self._requests),
            )

    def _notify(self, event: str, *args: object) -> None:
        if self._events is None:
            return
        try:
            getattr(self._events, event)(*args)
        except Exception:  # a metrics hook must never fail a load
            log.exception("registry event hook %s failed", event)


def _by_name(counts: Counter[str]) -> dict[str, int]:
    """Counts keyed by ``name@version`` summed per name (metrics label adapters by name)."""
    out: Counter[str] = Counter()
    for aid, n in counts.items():
        out[aid.partition("@")[0]] += n
    return dict(out)


def _stack_key(manifest: AdapterManifest) -> str:
    """Adapters share a bank stack when method and normalised config are equal."""
    return manifest.method + ":" + json.dumps(manifest.config, sort_keys=True)


def _retrieve(future: asyncio.Future[AdapterManifest]) -> None:
    """Mark a load's outcome as seen (a failed load nobody waits for is not an asyncio error:
    the registry already records it as the version's ``failed`` state)."""
    if not future.cancelled():
        future.exception()
