"""Leases: a request's hold on the adapter version it was admitted with.

A request holds a :class:`Lease` from before it is queued until its answer is built (``lease = await
registry.acquire(ref)`` ... ``lease.release()``). A leased version is never evicted or unloaded
(``service.residency``), so a hot swap or a delete never pulls an adapter from under queued
or running rows; the request finishes on the version it started with.

Threads: a lease is taken on the event loop (or a plain thread, ``acquire_blocking``) and
released from any thread (the engine worker may release it when it answers); :meth:`release`
is idempotent and takes only the lease's own lock before calling back into the registry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from lookaside.checkpoint import AdapterManifest

__all__ = ["Admission", "Lease"]


class Lease:
    """A request's hold on one resident version; release it once (idempotent) when answered.

    Args:
        release: gives the version back to the registry (called once, with the adapter id).
        manifest: the version's manifest as stored.
        tier: where the version was found (:attr:`tier`).
    """

    def __init__(
        self, release: Callable[[str], None], manifest: AdapterManifest, *, tier: str = "device"
    ) -> None:
        self._give_back = release
        self.manifest = manifest
        """The version's manifest (labels, features, head) as stored."""
        self.tier = tier
        """Where the version was when this request asked for it: ``device`` (resident), else
        the tier its load read it from (``host`` or ``disk``)."""
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
        self._give_back(self.adapter_id)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lease({self.adapter_id!r}, released={self._released})"


@dataclass(frozen=True)
class Admission:
    """A lease taken at once (``AdapterRegistry.admit``) and, for a version not resident yet,
    the future of its load (rows submitted with it wait for it in the engine's queue)."""

    lease: Lease
    ready: Future[AdapterManifest] | None
