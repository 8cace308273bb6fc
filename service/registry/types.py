"""What the registry shares with its neighbours: the engine protocol it loads through, the hooks
it tells of residency changes, and the snapshots it answers with (plain data, no behaviour)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from lookaside.bank.packed import PackedAdapter
from lookaside.checkpoint import AdapterCheckpoint
from service.engine.watchdog import EngineHealth
from service.residency import AdapterState

__all__ = ["EngineAdapters", "RegistryEvents", "RegistryStats", "VersionStatus"]


class EngineAdapters(Protocol):
    """What the registry needs of the engine (``service.engine.Engine`` provides it)."""

    def load_adapter(self, checkpoint: AdapterCheckpoint | PackedAdapter) -> Future[None]:
        """Copy a checkpoint into a free bank slot between batches; id ``name@version``.

        A :class:`~lookaside.checkpoint.ValidatedCheckpoint` skips the bank's finite scan (its
        every value was already scanned); a :class:`~lookaside.bank.packed.PackedAdapter` (built
        from one) is copied as it is. The future fails with :class:`BankFull` only from an
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

    def adapter_loaded(self, name: str, version: int, seconds: float, tier: str = "disk") -> None:
        """``name@version`` became resident after ``seconds``, read from ``tier`` (``host``:
        the host tier, no disk read; ``disk``: read and validated)."""
        ...

    def adapter_load_failed(self, name: str, version: int, reason: str) -> None:
        """A load of ``name@version`` failed."""
        ...

    def adapter_evicted(self, name: str, version: int) -> None:
        """``name@version`` was unloaded to make room (not for a delete)."""
        ...


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
    tier: str = "disk"
    """Where it is now: ``device`` (resident or loading), ``host`` (the host tier) or ``disk``."""
    device_bytes: int | None = None
    """Device bytes it takes when resident (None: not known here)."""


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
