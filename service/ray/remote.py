"""The ingress's engine and registry on Ray Serve: the same protocols as one process
(:mod:`service.backend`), answered by the model replicas.

:class:`RemoteEngine` sends each job to the model deployment with the multiplexed model id
``name@version``: Ray's router picks a replica that holds that adapter, the replica batches the
rows with whatever else it has queued, and the logits come back. A call lost with its replica
(killed, restarted, scaled away) is sent again, at most :data:`MAX_RETRIES` times within the
request's deadline; then the answer is 503 :class:`ReplicaUnavailable`, never a wrong answer
(classification is idempotent, so a retry cannot apply anything twice).

:class:`RemoteRegistry` resolves what a request names from the shared store's index, the same
rule as one process (:func:`service.registry.refs.resolve_stored`); the version chosen travels with
the call, so a request admitted on a version finishes on it whatever is activated meanwhile.
Admin routes write the store once; activation first makes the version resident on one replica
(``warm``), then flips the pointer. The other processes learn of the change from the store's
journal (:mod:`service.store.journal`).

Threads: everything here runs on the ingress's event loop, except the store writes (worker
threads, as in one process) and the store watcher thread.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from torch import Tensor

from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.errors import AdapterNotFound, ConfigError
from lookaside.tasks import Inputs, TaskKind
from service.backend import store_and_activate
from service.engine.batcher import row_tokens
from service.engine.watchdog import EngineHealth
from service.errors import (
    AdapterUnavailable,
    NotReady,
    QueueFull,
    ReplicaUnavailable,
    RequestTimeout,
)
from service.ray.metrics import ReplicaMetrics
from service.ray.wire import ReplicaAnswer
from service.registry import Admission, Lease, VersionStatus, adapter_id
from service.registry.refs import resolve_stored
from service.settings import ServiceSettings
from service.store import AdapterStore, PutResult
from service.store.journal import StoreWatcher

MAX_RETRIES = 2
"""Calls lost with a replica (or refused by a stopping one) are sent this many more times."""
_LOST = (RayActorError, DeploymentUnavailableError)


class RemoteEngine:
    """:class:`service.backend.Jobs` over the model deployment (module docstring)."""

    def __init__(
        self,
        handle: Any,
        backbone: VisionTransformer,
        settings: ServiceSettings,
        metrics: ReplicaMetrics,
    ) -> None:
        self.backbone = backbone
        """Validates uploads and shapes features; it never runs a forward here."""
        self.handle = handle
        self.max_batch_tokens = settings.max_batch_tokens
        self.metrics = metrics
        self._calls: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def alive(self) -> bool:
        """Until :meth:`stop`; a replica's engine is Ray's health check (``check_health``)."""
        return not self._closed

    @property
    def queue_depth(self) -> int:
        return len(self._calls)

    def health(self) -> EngineHealth:
        return EngineHealth(stalled=False, reason=None, since=None, stalled_for_s=0.0, dead=False)

    def resident(self) -> list[str]:
        """Versions resident on the replicas heard from lately (their last answers)."""
        return sorted({aid for ids in self.metrics.resident().values() for aid in ids})

    def submit_task(
        self,
        task: TaskKind,
        inputs: Inputs,
        adapter_id: str | None,
        *,
        request_id: str = "-",
        timeout_s: float = 30.0,
        ready: Future[Any] | None = None,
    ) -> Future[Tensor]:
        """Check the rows here (the same 422s as one process), then send them (event loop).
        ``ready`` is never given here (:meth:`RemoteRegistry.admit` loads nothing: the replica
        that runs the rows loads their adapter)."""
        if ready is not None and not ready.done():
            raise ConfigError("a Ray ingress does not wait for loads; the replica loads")
        if self._closed:
            raise NotReady("the server is shutting down; retry shortly", reason="shutting_down")
        if adapter_id is None:
            raise ConfigError("a Ray model replica runs rows for a named adapter only")
        row_tokens(task, inputs, self.backbone.cfg, adapter_id, self.max_batch_tokens)
        fut: Future[Tensor] = Future()
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        call = loop.create_task(
            self._call(fut, task.name, inputs, adapter_id, request_id, deadline)
        )
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)
        # the pipeline cancels the futures of an abandoned request: cancel the call with it
        fut.add_done_callback(lambda f: f.cancelled() and loop.call_soon_threadsafe(call.cancel))
        return fut

    async def _call(
        self,
        fut: Future[Tensor],
        task_name: str,
        inputs: Inputs,
        aid: str,
        request_id: str,
        deadline: float,
    ) -> None:
        try:
            logits = await self._send(task_name, inputs, aid, request_id, deadline)
        except asyncio.CancelledError:
            fut.cancel()
        except BaseException as exc:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(exc)
        else:
            if fut.set_running_or_notify_cancel():
                fut.set_result(logits)

    async def _send(
        self, task_name: str, inputs: Inputs, aid: str, request_id: str, deadline: float
    ) -> Tensor:
        """One call, sent again after a lost replica (at most :data:`MAX_RETRIES` times)."""
        handle = self.handle.options(multiplexed_model_id=aid)
        for attempt in range(MAX_RETRIES + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            started = time.perf_counter()
            try:
                response = handle.run.remote(task_name, inputs, request_id, remaining)
                answer: ReplicaAnswer = await asyncio.wait_for(response, remaining)
            except TimeoutError:
                break
            except BackPressureError:
                raise QueueFull(
                    "every model replica's queue is full; retry after the Retry-After delay"
                ) from None
            except _LOST as exc:
                if attempt == MAX_RETRIES:
                    raise ReplicaUnavailable(
                        f"the model replica serving {aid} was lost ({type(exc).__name__}) and "
                        f"{MAX_RETRIES} retries found none; retry shortly"
                    ) from None
                self.metrics.retries.labels(reason=type(exc).__name__).inc()
                await asyncio.sleep(min(0.1 * 2**attempt, max(deadline - time.monotonic(), 0)))
                continue
            self.metrics.answered(answer, aid.partition("@")[0], time.perf_counter() - started)
            if answer.error is None and answer.logits is not None:
                return answer.logits
            error = answer.error.rebuild() if answer.error else ReplicaUnavailable("no logits")
            if isinstance(error, NotReady) and attempt < MAX_RETRIES:  # stalled or stopping
                self.metrics.retries.labels(reason="NotReady").inc()
                continue
            raise error
        raise RequestTimeout(
            f"adapter {aid}'s model replica did not answer before the request timed out; retry, "
            "or raise LOOKASIDE_REQUEST_TIMEOUT_S"
        )

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new jobs; the calls in flight finish on their own (Ray drained the ingress's
        requests before its lifespan ends)."""
        self._closed = True


class RemoteRegistry:
    """:class:`service.backend.Adapters` over the shared store and the model deployment."""

    def __init__(
        self,
        store: AdapterStore,
        engine: RemoteEngine,
        *,
        backbone: VisionTransformer,
        settings: ServiceSettings,
    ) -> None:
        self.store = store
        self.engine = engine
        self.backbone = backbone
        self.settings = settings
        self.watcher = StoreWatcher(store, interval_s=settings.ray_sync_s).start()
        self._requests: dict[str, int] = {}

    def admit(self, ref: str) -> Admission:
        """Resolve ``ref`` to a stored version (the replica that runs the rows loads it)."""
        name, version = resolve_stored(self.store, ref)
        aid = adapter_id(name, version)
        self._requests[aid] = self._requests.get(aid, 0) + 1
        return Admission(Lease(lambda _aid: None, self.store.manifest(name, version)), None)

    async def acquire(
        self,
        ref: str,
        *,
        count: bool = True,
        timeout: float | None = None,
        checkpoint: AdapterCheckpoint | None = None,
    ) -> Lease:
        """Resolve ``ref`` to a stored version; the lease pins the version the call names (the
        replica holds its own lease while the rows run)."""
        name, version = resolve_stored(self.store, ref)
        manifest = self.store.manifest(name, version)
        if count:
            aid = adapter_id(name, version)
            self._requests[aid] = self._requests.get(aid, 0) + 1
        return Lease(lambda _aid: None, manifest)

    async def upload(
        self, manifest_bytes: bytes, weights_bytes: bytes, *, activate: bool = False
    ) -> PutResult:
        """Store once (validated here), then with ``activate`` make it resident and live."""
        return await store_and_activate(
            self, self.backbone, manifest_bytes, weights_bytes, activate=activate
        )

    async def activate(
        self, name: str, version: int, *, checkpoint: AdapterCheckpoint | None = None
    ) -> None:
        """Hot swap: resident on a replica first, then the pointer flips (journalled)."""
        if not self.store.has_version(name, version):
            raise AdapterNotFound(
                f"unknown adapter '{name}@{version}'; {self.store.describe(name)}"
            )
        await self._warm(adapter_id(name, version))
        if self.store.active(name) != version:
            await asyncio.to_thread(self.store.activate, name, version)

    async def _warm(self, aid: str) -> None:
        """Make ``aid`` resident on one replica (the one the router will send its rows to)."""
        timeout = self.settings.request_timeout_s
        started = time.perf_counter()
        try:
            handle = self.engine.handle.options(multiplexed_model_id=aid)
            answer: ReplicaAnswer = await asyncio.wait_for(handle.warm.remote(), timeout)
        except TimeoutError:
            raise AdapterUnavailable(
                f"{aid} did not load on a replica within {timeout} s"
            ) from None
        except (*_LOST, BackPressureError) as exc:
            raise AdapterUnavailable(f"no model replica could load {aid}: {exc}") from None
        self.engine.metrics.answered(answer, aid.partition("@")[0], time.perf_counter() - started)
        if answer.error is not None:
            error = answer.error.rebuild()
            if isinstance(error, AdapterUnavailable | AdapterNotFound):
                raise error
            raise AdapterUnavailable(f"loading {aid} on a replica failed: {error}")

    async def delete_version(self, name: str, version: int, *, force: bool = False) -> int | None:
        """Delete from the store; each replica unloads it when its watcher reads the journal."""
        return await asyncio.to_thread(self.store.delete_version, name, version, force=force)

    async def delete(self, name: str) -> list[int]:
        return await asyncio.to_thread(self.store.delete, name)

    def status(self, name: str) -> list[VersionStatus]:
        """Every stored version; resident if a replica heard from lately holds it."""
        stored = self.store.get(name)
        if stored is None:
            return []
        resident = set(self.engine.resident())
        out = []
        for version in stored.versions:
            aid = adapter_id(name, version)
            out.append(
                VersionStatus(
                    version=version,
                    state="ready" if aid in resident else "unloaded",
                    reason=None,
                    resident=aid in resident,
                    pinned=False,
                    in_flight=0,
                    requests=self._requests.get(aid, 0),
                    loads=0,
                    evictions=0,
                    load_seconds=None,
                    tier="device" if aid in resident else "disk",
                )
            )
        return out

    def close(self) -> None:
        self.watcher.stop()
