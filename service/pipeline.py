"""The one request pipeline behind ``POST /classify`` and ``POST /av-event``.

:func:`run` does, for every media route, in this order: resolve each adapter named to a stored
version (its manifest from the store's in-memory index) -> let the task kind refuse an adapter
that does not serve it -> admit each (a lease now; a cold version's load starts, or a 503 comes
at once) -> decode and featurise once in the featurize pool (a bad upload fails here, alone)
*while* cold adapters load -> submit one engine job per row group (a cold adapter's jobs carry
its load's future: they wait in the queue, parked, without holding back other adapters' rows,
and join the first batch after the load is published) -> wait for every result within the
deadline (a load on demand counts against it: 504, the load goes on).
On every path out (answer, error, timeout, client gone) it cancels what is still queued and
releases the leases. What differs per route is a :class:`Media` object: how its upload becomes
the task kind's inputs, and what to answer.

Threads: :func:`run` runs on the event loop; :meth:`Media.featurize` runs in the featurize pool;
nothing here touches the engine's objects (jobs are handed over through
:meth:`service.backend.Jobs.submit_task`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request
from torch import Tensor

from lookaside.checkpoint import AdapterManifest
from lookaside.errors import InvalidCheckpoint
from lookaside.tasks import Inputs, TaskKind
from service.backend import Adapters, Jobs
from service.deps import AppState
from service.errors import AdapterUnavailable, RequestTimeout
from service.logging import SCOPE_KEY
from service.registry import Admission, Lease, adapter_id
from service.registry.refs import resolve_stored
from service.request_io import gather, in_pool
from service.store import AdapterStore

log = logging.getLogger("service.pipeline")

ADAPTERS_KEY = "lookaside.adapters"
"""Scope key of the adapter names a request resolved (the metrics middleware labels by them)."""


class Media(Protocol):
    """One request's upload, as its route reads it, for one task kind."""

    task: TaskKind

    def refuse(self, manifest: AdapterManifest) -> None:
        """Raise the route's error when ``manifest``'s method does not serve :attr:`task`."""

    def featurize(self, manifests: Sequence[AdapterManifest]) -> float:
        """Decode and featurise for these adapters (featurize pool); returns the seconds spent."""

    def inputs(self, manifest: AdapterManifest) -> list[Inputs]:
        """The engine jobs' inputs for one adapter (after :meth:`featurize`); may refuse (413)."""


@dataclass
class Served:
    """What :func:`run` hands back: the leases (released) and each adapter's job outputs."""

    request_id: str
    leases: list[Lease]
    logits: list[list[Tensor]]
    """Per lease, the outputs of its jobs in submission order."""


async def run(
    request: Request,
    media: Media,
    refs: Sequence[str],
    deadline: float,
    *,
    state: AppState,
    engine: Jobs,
    registry: Adapters,
) -> Served:
    """resolve -> refuse -> admit -> featurize -> submit -> gather, then cancel/release on every
    path.

    ``engine`` and ``registry`` are the route's declared dependencies (``EngineDep``,
    ``RegistryDep``); ``state`` gives the featurize pool and the metrics.
    """
    request_id = str(request.scope.get(SCOPE_KEY, "-"))
    admitted: list[Admission] = []
    futures: list[Future[Tensor]] = []
    counts: list[int] = []
    try:
        manifests = [_stored_manifest(registry.store, ref) for ref in refs]
        request.scope[ADAPTERS_KEY] = [m.name for m in manifests]
        for manifest in manifests:
            media.refuse(manifest)
        for manifest in manifests:  # a lease now; a cold version's load starts (or 503 at once)
            admitted.append(registry.admit(adapter_id(manifest.name, manifest.version)))
        seconds = await in_pool(
            state.featurize_pool, lambda: media.featurize(manifests), deadline=deadline
        )
        state.metrics.safe(lambda: state.metrics.featurize.observe(seconds))
        for admission in admitted:
            jobs = media.inputs(admission.lease.manifest)
            counts.append(len(jobs))
            for inputs in jobs:
                futures.append(
                    engine.submit_task(
                        media.task,
                        inputs,
                        admission.lease.adapter_id,
                        request_id=request_id,
                        timeout_s=max(deadline - time.monotonic(), 0.0),
                        ready=admission.ready,
                    )
                )
        outputs = await _gather(futures, admitted, deadline)
    finally:
        for fut in futures:
            fut.cancel()  # no-op once running or done; drops rows of an abandoned request
        for admission in admitted:
            admission.lease.release()
    leases = [admission.lease for admission in admitted]
    log.debug(
        "request %s: %s",
        request_id,
        ", ".join(f"{lease.adapter_id} ({lease.tier})" for lease in leases),
    )
    per_lease: list[list[Tensor]] = []
    start = 0
    for count in counts:
        per_lease.append(outputs[start : start + count])
        start += count
    return Served(request_id, leases, per_lease)


async def _gather(
    futures: list[Future[Tensor]], admitted: Sequence[Admission], deadline: float
) -> list[Tensor]:
    """Every job's output within the deadline; a 504 names an adapter still loading (its load
    goes on for later requests)."""
    try:
        return await gather(futures, deadline - time.monotonic())
    except RequestTimeout:
        loading = [a.lease.adapter_id for a in admitted if a.ready and not a.ready.done()]
        if loading:
            raise RequestTimeout(
                f"adapter {', '.join(loading)} was still loading when the request timed out; "
                "retry shortly (the load goes on) or raise LOOKASIDE_REQUEST_TIMEOUT_S"
            ) from None
        raise


def _stored_manifest(store: AdapterStore, ref: str) -> AdapterManifest:
    """The manifest of the version ``ref`` names, from the store's index (O(1), no disk): 404
    lists what exists; a manifest that does not parse is a 503, as its load would be."""
    name, version = resolve_stored(store, ref)
    try:
        return store.manifest(name, version)
    except InvalidCheckpoint as exc:
        raise AdapterUnavailable(
            f"adapter {adapter_id(name, version)} could not be loaded: {exc}"
        ) from exc
