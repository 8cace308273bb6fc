"""One model replica on Ray Serve: an engine with its own bank, fed rows by adapter.

Each replica is what one process is without HTTP (:func:`service.app.start_serving`: backbone,
engine worker, store, registry, warm-up). The ingress calls :meth:`ModelReplica.run` with the
multiplexed model id ``name@version``; Ray Serve's router prefers the replicas whose multiplexing
cache holds that id, so an adapter's rows go where it is resident and loads are rare.

Residency has two layers that agree by construction: Ray's multiplexing cache (at most
``ray_adapters_per_replica`` ids, least recently used evicted: what the router knows) holds one
registry lease per id (:class:`_Held`), and the registry's resident limit is the same number, so
the registry never evicts what Ray believes resident, and an id Ray evicts is released to the
registry (idle, first in line for its eviction). Each call also holds its own lease from before
its rows are queued until they are answered, so an eviction never pulls an adapter from under
queued rows.

Threads: Ray runs the constructor and the methods on the replica's event loop; the engine keeps
its own threads (:mod:`service.engine`); the store watcher thread (``lookaside-store-watch``)
re-reads names other processes changed and hands deletions to the event loop. ``__del__`` runs
when Ray stops the replica, after it has drained the calls in flight: the engine answers what it
accepted, then stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from lookaside.errors import LookasideError
from lookaside.tasks import Inputs, get_task
from service import logging as service_logging
from service.app import start_serving
from service.deps import AppState
from service.engine import Engine
from service.errors import RequestTimeout
from service.http_limits import InflightBytes
from service.metrics import ServiceMetrics
from service.ray.export import EXPORT_S, RayExport
from service.ray.wire import RemoteError, ReplicaAnswer, replica_settings
from service.registry import AdapterRegistry, Lease, parse_ref
from service.store.journal import StoreWatcher

log = logging.getLogger("service.ray.replica")


class _Held:
    """The lease one multiplexing cache entry holds; Ray calls ``__del__`` when it evicts it."""

    def __init__(self, lease: Lease, on_release: Any) -> None:
        self.lease = lease
        self._on_release = on_release
        self._done = False

    def __del__(self) -> None:
        # Ray calls it on eviction, the garbage collector again later: only the first counts
        # (by then the id may be cached again, under a new holder).
        if self._done:
            return
        self._done = True
        self.lease.release()  # idempotent, any thread
        self._on_release(self)


class ModelReplica:
    """A Ray Serve deployment class (bound in :mod:`service.ray.app`)."""

    async def __init__(self, payload: dict[str, Any]) -> None:  # type: ignore[misc]
        # (Ray Serve awaits an async constructor: the backbone and the engine start here.)
        settings = replica_settings(payload)
        service_logging.configure(settings.log_format, settings.log_level)
        self.settings = settings
        self.state = AppState(
            settings=settings,
            metrics=ServiceMetrics(max_adapters=settings.metrics_max_adapters),
            featurize_pool=ThreadPoolExecutor(1, thread_name_prefix="lookaside-unused"),
            body_budget=InflightBytes(settings.max_inflight_body_bytes),
        )
        await start_serving(self.state, None)
        assert isinstance(self.state.engine, Engine)
        assert isinstance(self.state.registry, AdapterRegistry)
        self.engine: Engine = self.state.engine
        self.registry: AdapterRegistry = self.state.registry
        self.replica = _replica_id()
        self._cached: set[str] = set()
        """Ids in (or entering) Ray's multiplexing cache; only the event loop adds."""
        self._holds: dict[str, _Held] = {}
        """The lease each cached id holds (dropped early when its version is deleted)."""

        async def hold(model_id: str) -> _Held:
            return await self._hold(model_id)

        self._resident = serve.multiplexed(
            max_num_models_per_replica=settings.max_resident_adapters
            or settings.ray_adapters_per_replica
        )(hold)
        loop = asyncio.get_running_loop()
        self._watcher = StoreWatcher(
            self.registry.store,
            interval_s=settings.ray_sync_s,
            on_change=lambda names: self._retire_deleted(names, loop),
        ).start()
        self._stopped = False
        self._export = loop.create_task(
            RayExport(self.state.metrics.registry, interval_s=EXPORT_S).run(lambda: self._stopped)
        )
        log.info("replica %s ready (pid %d)", self.replica, os.getpid())

    def _retire_deleted(self, names: list[str], loop: asyncio.AbstractEventLoop) -> None:
        """Watcher thread: versions another process deleted leave this replica's bank."""
        asyncio.run_coroutine_threadsafe(self._forget(names), loop)

    async def _forget(self, names: list[str]) -> None:
        """Release the cache's lease of each deleted version (Ray's cache entry stays until its
        LRU turn: harmless, every call takes its own lease), then unload them."""
        store = self.registry.store
        for aid, held in list(self._holds.items()):
            name, _, version = aid.partition("@")
            if name in names and not store.has_version(name, int(version)):
                held.lease.release()
                self._holds.pop(aid, None)
                self._cached.discard(aid)
        gone = await self.registry.retire_deleted(names)
        if gone:
            log.info("unloaded deleted %s", ", ".join(gone))

    async def _hold(self, model_id: str) -> _Held:
        """Ray's loader for a multiplexed id: a lease on that exact version (loading it)."""
        name, version = parse_ref(model_id)
        store = self.registry.store
        if version is not None and not store.has_version(name, version):
            await asyncio.to_thread(store.refresh, name)  # written by the ingress after our scan
        try:
            lease = await self.registry.acquire(
                model_id, count=False, timeout=self.settings.request_timeout_s
            )
        except BaseException:
            self._cached.discard(model_id)
            raise
        held = _Held(lease, self._released)
        self._holds[model_id] = held
        return held

    def _released(self, held: _Held) -> None:
        """Ray evicted ``held`` from its cache (any thread); a newer holder of the id stays."""
        model_id = held.lease.adapter_id
        if self._holds.get(model_id) is held:
            self._holds.pop(model_id, None)
            self._cached.discard(model_id)

    async def run(
        self, task_name: str, inputs: Inputs, request_id: str, timeout_s: float
    ) -> ReplicaAnswer:
        """One request's rows of ``task_name`` for the multiplexed adapter; errors as values."""
        model_id = serve.get_multiplexed_model_id()
        deadline = time.monotonic() + timeout_s
        loaded = model_id not in self._cached
        self._cached.add(model_id)
        try:
            await asyncio.wait_for(self._resident(model_id), max(timeout_s, 0.0))
            lease = await self.registry.acquire(model_id, timeout=deadline - time.monotonic())
            try:
                fut = self.engine.submit_task(
                    get_task(task_name),
                    inputs,
                    lease.adapter_id,
                    request_id=request_id,
                    timeout_s=max(deadline - time.monotonic(), 0.0),
                )
                try:
                    logits = await asyncio.wait_for(
                        asyncio.wrap_future(fut), max(deadline - time.monotonic(), 0.0)
                    )
                finally:
                    fut.cancel()  # no-op once done; drops the rows of an abandoned call
            finally:
                lease.release()
        except TimeoutError:
            return self._answer(None, RemoteError.of(RequestTimeout(_TIMEOUT)), loaded)
        except LookasideError as exc:
            return self._answer(None, RemoteError.of(exc), loaded)
        return self._answer(logits, None, loaded)

    async def warm(self) -> ReplicaAnswer:
        """Make the multiplexed adapter resident here (activation loads before the flip)."""
        model_id = serve.get_multiplexed_model_id()
        loaded = model_id not in self._cached
        self._cached.add(model_id)
        try:
            await self._resident(model_id)
        except LookasideError as exc:
            return self._answer(None, RemoteError.of(exc), loaded)
        return self._answer(None, None, loaded)

    def whoami(self) -> dict[str, Any]:
        """This replica's id, process and residents (operations, tests)."""
        return {"replica": self.replica, "pid": os.getpid(), "resident": self.registry.resident()}

    def check_health(self) -> None:
        """Ray Serve's health check: a dead engine (worker gone, or stuck past
        ``engine_dead_s``) fails it, and Ray replaces the replica. A stalled one refuses new rows
        with 503 and the ingress retries them elsewhere."""
        if not self._stopped and (not self.engine.alive or self.engine.health().dead):
            raise RuntimeError(f"engine of replica {self.replica} is dead; restart it")

    def __del__(self) -> None:
        """Ray stops the replica (scale-down, redeploy, shutdown) after draining its calls."""
        if getattr(self, "_stopped", True):
            return
        self._stopped = True
        self._export.cancel()
        self._watcher.stop()
        timeout = self.settings.request_timeout_s + self.settings.engine_stall_s
        self.engine.stop(drain=True, timeout=timeout)
        self.registry.close()
        self.state.featurize_pool.shutdown(wait=False)

    def _answer(self, logits: Any, error: RemoteError | None, loaded: bool) -> ReplicaAnswer:
        return ReplicaAnswer(
            replica=self.replica,
            logits=logits,
            error=error,
            loaded=loaded,
            queue_depth=self.engine.queue_depth,
            resident=tuple(self.engine.resident()),
        )


_TIMEOUT = "the request timed out on its model replica; retry, or raise LOOKASIDE_REQUEST_TIMEOUT_S"


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica (unit use)
        return f"pid{os.getpid()}"
