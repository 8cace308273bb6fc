"""The live ``/stream`` sessions of one app: the session cap, and closing them all at shutdown.

A connection takes a slot as soon as it is accepted (before its opening message), so the cap
(``stream_max_sessions``) bounds every session's memory, opening ones included. At shutdown the
lifespan calls :meth:`LiveSessions.close_all` before the engine drains: each session is told to
close with 1001 (its pending windows cancelled, its leases released), then it waits, bounded,
for them to end.

Threads: event loop only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from service.metrics import ServiceMetrics

__all__ = ["LiveSessions", "Slot"]

log = logging.getLogger("service.stream")


class Slot:
    """One connection's place among the live sessions; :meth:`release` once it ends."""

    def __init__(self, owner: LiveSessions) -> None:
        self._owner = owner
        self.stop: Callable[[], None] | None = None
        """Set by the session once it runs: closes it with 1001 (shutdown)."""
        self.ended = asyncio.Event()

    def release(self) -> None:
        if not self.ended.is_set():
            self.ended.set()
            self._owner._release(self)


class LiveSessions:
    """At most ``cap`` sessions at once (4429 beyond), all closed at shutdown."""

    def __init__(self, cap: int, metrics: ServiceMetrics) -> None:
        self.cap = cap
        self.metrics = metrics
        self._slots: set[Slot] = set()
        self.closing = False
        """Shutdown has begun: no new session."""

    def __len__(self) -> int:
        return len(self._slots)

    def take(self) -> Slot | None:
        """A slot, or None at the cap (or once shutting down)."""
        if self.closing or len(self._slots) >= self.cap:
            return None
        slot = Slot(self)
        self._slots.add(slot)
        self._gauge()
        return slot

    def _release(self, slot: Slot) -> None:
        self._slots.discard(slot)
        self._gauge()

    def _gauge(self) -> None:
        count = len(self._slots)
        self.metrics.safe(lambda: self.metrics.stream_sessions.set(count))

    async def close_all(self, timeout: float) -> None:
        """Close every session with 1001 and wait (at most ``timeout``) until each has ended."""
        self.closing = True
        slots = list(self._slots)
        if not slots:
            return
        log.info("closing %d live stream sessions (1001, shutting down)", len(slots))
        for slot in slots:
            if slot.stop is not None:
                slot.stop()
        try:
            async with asyncio.timeout(timeout):
                for slot in slots:
                    await slot.ended.wait()
        except TimeoutError:
            left = sum(not s.ended.is_set() for s in slots)
            log.warning("%d stream sessions did not end within %.1f s of shutdown", left, timeout)
