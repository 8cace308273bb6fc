"""The registry's loader: makes one stored version resident, top to bottom.

The sequence, for one :class:`~service.registry.active.Entry`:

1. (loader thread) wait for a pending unload of the same id (a version deleted and loaded again);
2. (loader thread) take the packed adapter from the **host tier** (validated once, packed once:
   no disk read, no validation), or read and validate the checkpoint from the store (disk,
   sha256, header, host tensors) and pack it into the host tier; an upload being activated
   hands over its checkpoint, validated in memory (validate once), which seeds the host tier;
3. hand it to the engine (``engine.load_adapter``: one worker command at the next batch boundary,
   see :mod:`service.engine.loads`) and **do not wait**: the loader thread is free for the next
   disk read at once, so every load queued during a forward is published at the same boundary.
   When the engine's future completes (a done-callback, on the engine's thread): ready; or, on
   :class:`~lookaside.errors.BankFull`, the residency policy's idle victim of that stack is
   unloaded and the load handed over again once the unload is applied, or the load fails with a
   503 when every version of the stack is leased or pinned;
4. record the outcome in the :class:`~service.registry.active.ActiveMap` (ready, or failed with the
   reason), which answers every request waiting on this version.

Bounds: ``threads`` loads read and validate at once (``max_loading_adapters``); at most
``max_pending`` loads are in progress (from ``start`` to their outcome) at once: a request that
would start one more gets 503 + Retry-After at once (``cold_overload``), while requests for
resident versions never wait behind cold ones. A done-callback never blocks (it only records and
enqueues). A dead engine fails every load it had not applied (``EngineLoads.give_up``), so no
load stays ``loading`` for ever; and a watch thread (``adapter-load-watch``) fails the loads
handed over to an engine that reports itself dead (stuck past ``engine_dead_s``) within
:data:`WAIT_SLICE_S`, whatever the engine does with them.

Threads: the loader threads (``adapter-load``, owned here) run steps 1-2; the engine's future
callbacks run steps 3-4 on whichever thread completes it. Neither touches the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

from lookaside.adapters import shapes
from lookaside.backbone import VisionTransformer
from lookaside.bank.packed import PackedAdapter
from lookaside.checkpoint import AdapterCheckpoint, AdapterManifest, ValidatedCheckpoint
from lookaside.errors import BankFull
from service.errors import AdapterUnavailable
from service.registry.active import ActiveMap, EngineAdapters, Entry
from service.registry.packing import AdapterPacking
from service.store import AdapterStore
from service.tiers.host_cache import HostCache

__all__ = ["RegistryLoader", "stack_key"]

log = logging.getLogger("service.registry")

WAIT_SLICE_S = 0.5
"""How often a loader thread waiting on an unload checks whether the engine is dead."""

Loadable = AdapterCheckpoint | PackedAdapter


class RegistryLoader:
    """The loader threads of one registry and the load sequence (module docstring).

    Args:
        threads: loads read and validated at once.
        max_pending: most loads in progress at once (None: no bound).
        host: the host tier (None: off; every load reads the disk).
        packing: sizes and packing for the engine's bank (None: the checkpoint is handed over
            as it is, and the host tier stays off).
    """

    def __init__(
        self,
        store: AdapterStore,
        engine: EngineAdapters,
        active: ActiveMap,
        *,
        backbone: VisionTransformer,
        threads: int,
        max_pending: int | None = None,
        host: HostCache[PackedAdapter] | None = None,
        packing: AdapterPacking | None = None,
    ) -> None:
        self._store = store
        self._engine = engine
        self._active = active
        self._backbone = backbone
        self._max_pending = max_pending
        self.host = host if packing is not None else None
        self._packing = packing
        self._lock = threading.Lock()
        self._in_progress = 0
        self._handed: set[_Handed] = set()
        """Loads handed to the engine and not settled (guarded by ``_lock``)."""
        self._closed = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="adapter-load")
        self._watch = threading.Thread(
            target=self._watch_engine, name="adapter-load-watch", daemon=True
        )
        self._watch.start()

    @property
    def in_progress(self) -> int:
        """Loads started and not finished."""
        with self._lock:
            return self._in_progress

    def start(self, entry: Entry, checkpoint: AdapterCheckpoint | None = None) -> None:
        """Queue the load of ``entry`` (enqueue only: called under the map's lock).

        Raises:
            AdapterUnavailable: ``max_pending`` loads are in progress (503, retry shortly).
        """
        with self._lock:
            if self._max_pending is not None and self._in_progress >= self._max_pending:
                raise AdapterUnavailable(
                    f"adapter {entry.id} is not resident and {self._in_progress} adapter loads "
                    "are already in progress (cold_overload); retry shortly, or raise "
                    "max_pending_loads"
                )
            self._in_progress += 1
        try:
            self._pool.submit(self._load, entry, checkpoint)
        except BaseException:
            self._finished()
            raise

    def close(self) -> None:
        """Stop the loader threads (loads in progress are abandoned)."""
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _watch_engine(self) -> None:
        """Watch thread: fail every handed-over load once the engine reports itself dead."""
        while not self._closed.wait(WAIT_SLICE_S):
            try:
                self._fail_if_dead()
            except Exception:  # keep watching: a missed round only delays the failure
                log.exception("the adapter-load watch failed a round")

    def _fail_if_dead(self) -> None:
        """One round of the watch: settle every handed-over load as failed if the engine is
        dead."""
        with self._lock:
            if not self._handed:
                return
        health = self._engine.health()
        if health.dead:
            with self._lock:
                stuck = list(self._handed)
            for handed in stuck:
                self._settle(
                    handed,
                    AdapterUnavailable(
                        f"adapter {handed.entry.id} could not be loaded: the engine is stuck "
                        f"({health.reason}); retry on another replica"
                    ),
                )

    def _load(self, entry: Entry, given: AdapterCheckpoint | None) -> None:
        """Loader thread: steps 1-2, then hand over (step 3)."""
        start = time.perf_counter()
        try:
            pending = self._active.unloading(entry.id)
            if pending is not None:  # the same id is still being unloaded: let it finish first
                self._wait(pending, entry.id)
            item = self._fetch(entry, given)
            entry.stack = stack_key(item.manifest)
        except BaseException as exc:
            self._fail(entry, exc)
            return
        self._hand_over(entry, item, start)

    def _fetch(self, entry: Entry, given: AdapterCheckpoint | None) -> Loadable:
        """The adapter from the host tier, or validated (from ``given`` or the disk) and packed
        into the host tier."""
        host = self.host
        if given is None and host is not None:
            cached = host.get(entry.id)
            if cached is not None:
                entry.source = "host"
                return cached
        entry.source = "disk"
        ckpt = given or self._store.load(entry.name, entry.version, backbone=self._backbone)
        if self._packing is None or not isinstance(ckpt, ValidatedCheckpoint):
            return ckpt
        packed = self._packing.pack(ckpt)
        if host is not None:
            host.put(entry.id, packed)
            if entry.retired:  # deleted meanwhile (marked before its copy was discarded)
                host.discard(entry.id)
        return packed

    def _hand_over(self, entry: Entry, item: Loadable, start: float) -> None:
        """Step 3: one engine load; its outcome is recorded by :meth:`_landed` (never waits).
        The load stays tracked (the watch thread may fail it) until it is settled."""
        host = self.host
        held = host is not None and isinstance(item, PackedAdapter) and host.hold(entry.id)
        handed = _Handed(entry, held, item.manifest)
        with self._lock:
            self._handed.add(handed)
        self._submit(handed, item, start)

    def _submit(self, handed: _Handed, item: Loadable, start: float) -> None:
        """Hand ``item`` to the engine (again, after an eviction made room) unless settled."""
        if handed.settled:
            return
        try:
            future = self._engine.load_adapter(item)
        except BaseException as exc:
            self._settle(handed, exc)
            return
        future.add_done_callback(lambda f: self._landed(handed, item, start, f))

    def _landed(self, handed: _Handed, item: Loadable, start: float, future: Future[None]) -> None:
        """Step 4 (the engine's thread): ready; or, on BankFull, evict a victim (of that stack,
        else any idle one: only an emptied stack gives its bytes back) and hand over again."""
        entry = handed.entry
        exc = future.exception()
        if exc is None:
            if not self._settle(handed, None, seconds=time.perf_counter() - start):
                # failed by the watch thread meanwhile: take back what the engine published
                self._active.drop_orphan(entry)
            return
        if not isinstance(exc, BankFull):
            pending = self._active.unloading(entry.id)
            if pending is not None and not handed.retried:  # an orphan of an older load
                handed.retried = True
                pending.add_done_callback(lambda _: self._submit(handed, item, start))
                return
            self._settle(handed, exc)
            return
        try:
            unloaded = self._active.evict_from_stack(entry)
            if unloaded is None:
                unloaded = self._active.evict_any(entry)
        except BaseException as failure:
            self._settle(handed, failure)
            return
        if unloaded is None:
            self._settle(
                handed,
                AdapterUnavailable(
                    f"no room on the device for {entry.id} ({item.manifest.method}): every "
                    "resident adapter is in use or pinned; retry shortly or raise "
                    f"device_cache_bytes ({exc})"
                ),
            )
            return
        unloaded.add_done_callback(lambda _: self._submit(handed, item, start))

    def _settle(self, handed: _Handed, exc: BaseException | None, *, seconds: float = 0.0) -> bool:
        """Record the load's outcome once (ready, or failed with ``exc``); False when it was
        settled already (by the watch thread, or the other way round)."""
        with self._lock:
            self._handed.discard(handed)
        if not handed.settle():
            return False
        self._release(handed.entry, handed.held)
        self._finished()
        if exc is None:
            self._active.loaded(handed.entry, handed.item_manifest, seconds)
        else:
            self._active.failed(handed.entry, exc)
        return True

    def _release(self, entry: Entry, held: bool) -> None:
        if held and self.host is not None:
            self.host.release(entry.id)

    def _fail(self, entry: Entry, exc: BaseException) -> None:
        self._finished()
        self._active.failed(entry, exc)

    def _finished(self) -> None:
        with self._lock:
            self._in_progress -= 1

    def _wait(self, future: Future[None], aid: str) -> None:
        """``future.result()``, bounded: give up once the engine reports itself dead."""
        while True:
            try:
                future.result(timeout=WAIT_SLICE_S)
                return
            except FuturesTimeout:
                health = self._engine.health()
                if health.dead:
                    raise AdapterUnavailable(
                        f"adapter {aid} could not be loaded: the engine is stuck "
                        f"({health.reason}); retry on another replica"
                    ) from None


def stack_key(manifest: AdapterManifest) -> str:
    """The bank stack the adapter lives in (the bank's own key: method and parsed config); a
    head-only method, which has no stack, is keyed by its method."""
    return shapes.stack_key(manifest.method, manifest.adapter_config()) or f"{manifest.method}:head"


class _Handed:
    """One load handed to the engine: settled once, by its future's callback or by the watch
    thread, whichever comes first."""

    def __init__(self, entry: Entry, held: bool, manifest: AdapterManifest) -> None:
        self.entry = entry
        self.held = held
        self.item_manifest = manifest
        self.retried = False
        """Handed over again once after an older load's orphan was unloaded."""
        self._settled = False
        self._lock = threading.Lock()

    @property
    def settled(self) -> bool:
        return self._settled

    def settle(self) -> bool:
        """True for the first caller only."""
        with self._lock:
            if self._settled:
                return False
            self._settled = True
            return True
