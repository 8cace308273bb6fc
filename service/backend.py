"""What the routes and the request pipeline need from an engine and a registry, as protocols.

Two implementations stand behind each: in one process, :class:`service.engine.Engine` (the
worker thread, the bank) and :class:`service.registry.AdapterRegistry` (residency, loads); on Ray
Serve, the ingress's :class:`service.ray.remote.RemoteEngine` (jobs sent to model replicas, each
an ``Engine`` of its own) and :class:`service.ray.remote.RemoteRegistry` (versions resolved from
the shared store, loads done by the replicas). The routes, the pipeline and the HTTP contract are
the same code in both, so both deployments answer with the same routes, errors and OpenAPI.
"""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor

from service.errors import AdapterUnavailable

if TYPE_CHECKING:
    from lookaside.backbone import VisionTransformer
    from lookaside.checkpoint import AdapterCheckpoint
    from lookaside.tasks import Inputs, TaskKind
    from service.engine.watchdog import EngineHealth
    from service.registry import Admission, Lease, VersionStatus
    from service.store import AdapterStore, PutResult


class Jobs(Protocol):
    """Runs one request's rows for one adapter version (``submit_task``) and reports health."""

    backbone: VisionTransformer

    @property
    def alive(self) -> bool:
        """False once the worker died outside a shutdown (liveness fails)."""
        ...

    @property
    def queue_depth(self) -> int:
        """Jobs accepted and not yet answered."""
        ...

    def health(self) -> EngineHealth:
        """Stalled (not ready) or dead (liveness fails), and why."""
        ...

    def resident(self) -> list[str]:
        """Adapter ids resident (as far as this process knows)."""
        ...

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
        """Queue one request's rows of ``task`` for one adapter; a future of the per-row logits.
        ``ready``: the adapter's load, not done yet (the rows wait for it without holding back
        other adapters' rows, and fail with its error)."""
        ...

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting, answer (``drain``) or fail what was accepted; blocking."""
        ...


class Adapters(Protocol):
    """Resolves what a request names to a leased version; uploads, swaps and deletes."""

    store: AdapterStore

    def admit(self, ref: str) -> Admission:
        """``name`` / ``name@version`` -> a lease now, and the load's future if not resident."""
        ...

    async def acquire(
        self,
        ref: str,
        *,
        count: bool = True,
        timeout: float | None = None,
        checkpoint: AdapterCheckpoint | None = None,
    ) -> Lease:
        """``name`` / ``name@version`` -> a lease on that version, servable when it returns."""
        ...

    async def upload(
        self, manifest_bytes: bytes, weights_bytes: bytes, *, activate: bool = False
    ) -> PutResult:
        """Store an upload; with ``activate``, make it servable and live."""
        ...

    async def activate(
        self, name: str, version: int, *, checkpoint: AdapterCheckpoint | None = None
    ) -> None:
        """Hot swap: make ``name@version`` servable, then the active version."""
        ...

    async def delete_version(self, name: str, version: int, *, force: bool = False) -> int | None:
        """Delete one version; the active version afterwards."""
        ...

    async def delete(self, name: str) -> list[int]:
        """Delete every version of ``name``; the versions deleted."""
        ...

    def status(self, name: str) -> list[VersionStatus]:
        """Every stored version of ``name`` with its residency state."""
        ...

    def close(self) -> None:
        """Stop background work."""
        ...


async def store_and_activate(
    adapters: Adapters,
    backbone: VisionTransformer,
    manifest_bytes: bytes,
    weights_bytes: bytes,
    *,
    activate: bool,
) -> PutResult:
    """Both registries' upload: store once (validated first); with ``activate``, make the version
    servable and live, or say it is stored but not activated and how to retry (503)."""
    result = await asyncio.to_thread(
        adapters.store.put, manifest_bytes, weights_bytes, backbone=backbone
    )
    if not activate:
        return result
    try:
        await adapters.activate(result.name, result.version, checkpoint=result.checkpoint)
    except AdapterUnavailable as exc:
        state = "active but not loaded" if result.active else "not activated"
        raise AdapterUnavailable(
            f"stored as {result.name}@{result.version} ({state}): {exc}; retry with "
            f"POST /adapters/{result.name}/activate"
        ) from exc
    return dataclasses.replace(result, active=True)
