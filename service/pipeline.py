"""The one request pipeline behind ``POST /classify`` and ``POST /av-event``.

:func:`run` does, for every media route, in this order: acquire a lease on each adapter named
(a load on demand counts against the request's deadline) -> let the task kind refuse an adapter
that does not serve it -> decode and featurise once in the featurize pool (a bad upload fails
here, alone) -> submit one engine job per row group -> wait for every result within the deadline.
On every path out (answer, error, timeout, client gone) it cancels what is still queued and
releases the leases. What differs per route is a :class:`Media` object: how its upload becomes
the task kind's inputs, and what to answer.

Threads: :func:`run` runs on the event loop; :meth:`Media.featurize` runs in the featurize pool;
nothing here touches the engine's objects (jobs are handed over through
:meth:`service.backend.Jobs.submit_task`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request
from torch import Tensor

from lookaside.checkpoint import AdapterManifest
from lookaside.tasks import Inputs, TaskKind
from service.backend import Adapters, Jobs
from service.deps import AppState
from service.logging import SCOPE_KEY
from service.registry import Lease
from service.request_io import gather, in_pool

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
    """acquire -> featurize -> submit -> gather, then cancel/release on every path.

    ``engine`` and ``registry`` are the route's declared dependencies (``EngineDep``,
    ``RegistryDep``); ``state`` gives the featurize pool and the metrics.
    """
    request_id = str(request.scope.get(SCOPE_KEY, "-"))
    leases: list[Lease] = []
    futures: list[Future[Tensor]] = []
    counts: list[int] = []
    try:
        for ref in refs:
            # a load on demand counts against the request's timeout (504; the load goes on)
            leases.append(await registry.acquire(ref, timeout=deadline - time.monotonic()))
        request.scope[ADAPTERS_KEY] = [lease.manifest.name for lease in leases]
        for lease in leases:
            media.refuse(lease.manifest)
        manifests = [lease.manifest for lease in leases]
        seconds = await in_pool(
            state.featurize_pool, lambda: media.featurize(manifests), deadline=deadline
        )
        state.metrics.safe(lambda: state.metrics.featurize.observe(seconds))
        for lease in leases:
            jobs = media.inputs(lease.manifest)
            counts.append(len(jobs))
            for inputs in jobs:
                futures.append(
                    engine.submit_task(
                        media.task,
                        inputs,
                        lease.adapter_id,
                        request_id=request_id,
                        timeout_s=max(deadline - time.monotonic(), 0.0),
                    )
                )
        outputs = await gather(futures, deadline - time.monotonic())
    finally:
        for fut in futures:
            fut.cancel()  # no-op once running or done; drops rows of an abandoned request
        for lease in leases:
            lease.release()
    per_lease: list[list[Tensor]] = []
    start = 0
    for count in counts:
        per_lease.append(outputs[start : start + count])
        start += count
    return Served(request_id, leases, per_lease)
