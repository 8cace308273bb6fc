"""The registry's loader: makes one stored version resident, top to bottom, on a loader thread.

The sequence (:meth:`RegistryLoader._load`), for one :class:`~service.registry.active.Entry`:

1. wait for a pending unload of the same id (a version deleted and loaded again) to finish;
2. read and validate the checkpoint from the store (disk, sha256, header, host tensors), unless
   the upload being activated hands over its checkpoint, validated in memory (validate once);
3. hand it to the engine (``engine.load_adapter``: reserve -> copy -> publish, see
   :mod:`service.engine.loads`) and wait for it. Only an engine whose stacks cannot grow reports
   :class:`~lookaside.errors.BankFull`; then the residency policy's idle victim of that stack is
   unloaded and the load retried, or the load fails with a 503 when every version of the stack
   is leased or pinned;
4. record the outcome in the :class:`~service.registry.active.ActiveMap` (ready, or failed with the
   reason), which answers every request waiting on this version.

Threads: the loader threads (``adapter-load``, a small pool owned by :class:`RegistryLoader`)
run the whole sequence; they never touch the event loop. Every wait on the engine is bounded:
it gives up (503) once the engine reports itself dead (stuck past ``engine_dead_s``; liveness then
restarts the process), instead of holding the thread for ever.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

from lookaside.adapters import shapes
from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import AdapterCheckpoint, AdapterManifest
from lookaside.errors import BankFull
from service.errors import AdapterUnavailable
from service.registry.active import ActiveMap, EngineAdapters, Entry
from service.store import AdapterStore

__all__ = ["RegistryLoader", "stack_key"]

log = logging.getLogger("service.registry")

WAIT_SLICE_S = 0.5
"""How often a loader thread waiting on the engine checks whether the engine is dead."""


class RegistryLoader:
    """The loader threads of one registry and the load sequence they run (module docstring)."""

    def __init__(
        self,
        store: AdapterStore,
        engine: EngineAdapters,
        active: ActiveMap,
        *,
        backbone: VisionTransformer,
        threads: int,
    ) -> None:
        self._store = store
        self._engine = engine
        self._active = active
        self._backbone = backbone
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="adapter-load")

    def start(self, entry: Entry, checkpoint: AdapterCheckpoint | None = None) -> None:
        """Queue the load of ``entry`` (enqueue only: called under the map's lock)."""
        self._pool.submit(self._load, entry, checkpoint)

    def close(self) -> None:
        """Stop the loader threads (loads in progress are abandoned)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _load(self, entry: Entry, given: AdapterCheckpoint | None) -> None:
        """Loader thread: the whole sequence of the module docstring."""
        start = time.perf_counter()
        try:
            pending = self._active.unloading(entry.id)
            if pending is not None:  # the same id is still being unloaded: let it finish first
                self._wait(pending, entry.id)
            ckpt = given or self._store.load(entry.name, entry.version, backbone=self._backbone)
            entry.stack = stack_key(ckpt.manifest)
            self._into_engine(entry, ckpt)
        except BaseException as exc:
            self._active.failed(entry, exc)
            return
        self._active.loaded(entry, ckpt.manifest, time.perf_counter() - start)

    def _into_engine(self, entry: Entry, ckpt: AdapterCheckpoint) -> None:
        """``engine.load_adapter``; on :class:`BankFull` evict an idle same-stack version, retry."""
        while True:
            try:
                # a ValidatedCheckpoint (store.put / store.load): the bank scans it no second time
                self._wait(self._engine.load_adapter(ckpt), entry.id)
                return
            except BankFull as exc:
                unloaded = self._active.evict_from_stack(entry)
                if unloaded is None:
                    raise AdapterUnavailable(
                        f"no free slot for {entry.id} ({ckpt.manifest.method}): every "
                        "resident adapter of that method and config is in use or pinned; "
                        f"retry shortly or raise bank_capacity ({exc})"
                    ) from exc
                self._wait(unloaded, entry.id)

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
