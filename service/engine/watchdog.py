"""The engine watchdog: notices a forward, bank command or adapter load that runs too long.

The engine has one worker thread; a forward that never ends (a pathological input, a hung
kernel) wedges every adapter behind it, and nothing inside the worker can notice. The engine
therefore registers each unit of work here (:meth:`Watchdog.watch`), and a monitor thread
(``lookaside-watchdog``, a daemon) sleeps until the oldest registered unit would overrun its
budget and then reports it once (``on_stall``); when that unit ends, ``on_recover`` runs on the
thread that ran it. Nothing is polled: the monitor wakes when work starts or ends, or at the one
deadline that matters.

:meth:`Watchdog.health` is computed from the registered work at call time, so ``/readyz`` and
``/healthz`` never lag the monitor: stalled once the oldest unit is older than ``stall_s``, dead
(liveness fails, the orchestrator restarts the process) once it is older than ``dead_s``.
See ``docs/probes.md`` for how an orchestrator uses the two probes.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from lookaside.errors import ConfigError

log = logging.getLogger("service.engine.watchdog")

__all__ = ["Activity", "EngineHealth", "Watchdog"]


@dataclass(frozen=True, eq=False)
class Activity:
    """One unit of engine work being watched."""

    kind: str
    """``forward``, ``bank command`` or ``adapter load``."""
    detail: str
    """What it is working on (rows, adapters and request ids of a batch; the adapter loaded)."""
    started: float
    """``time.monotonic()`` when it began."""

    def describe(self) -> str:
        return f"{self.kind} ({self.detail})"


@dataclass(frozen=True)
class EngineHealth:
    """Whether the engine can serve: what ``/readyz`` and ``/healthz`` report."""

    stalled: bool
    """A unit of work has run longer than ``stall_s``: not ready, new work is refused."""
    reason: str | None
    """Why it is stalled (which work, for how long, which limit); None when healthy."""
    since: float | None
    """``time.monotonic()`` when the overrunning work started; None when healthy."""
    stalled_for_s: float
    """How long that work has run so far (0 when healthy)."""
    dead: bool
    """It has run longer than ``dead_s``: liveness fails so the process is restarted."""


HEALTHY = EngineHealth(stalled=False, reason=None, since=None, stalled_for_s=0.0, dead=False)


class Watchdog:
    """Watches the engine's units of work against a stall and a dead budget.

    Args:
        stall_s: a unit running longer than this marks the engine stalled.
        dead_s: a unit running longer than this marks it dead (``>= stall_s``).
        on_stall: called once per stall, on the monitor thread, with the overrunning unit and its
            age; its errors are logged, never raised.
        on_recover: called when that unit ends, on the thread that ran it, with the unit and its
            total duration.
    """

    def __init__(
        self,
        *,
        stall_s: float,
        dead_s: float,
        on_stall: Callable[[Activity, float], None],
        on_recover: Callable[[Activity, float], None],
    ) -> None:
        if stall_s <= 0 or dead_s < stall_s:
            raise ConfigError(f"need 0 < stall_s <= dead_s, got stall_s={stall_s}, dead_s={dead_s}")
        self.stall_s = stall_s
        self.dead_s = dead_s
        self._on_stall = on_stall
        self._on_recover = on_recover
        self._cond = threading.Condition()
        self._events = threading.Lock()
        """Held across a stall/recovery state change and its callback, so they never reorder."""
        self._active: dict[int, Activity] = {}
        self._ids = itertools.count()
        self._flagged: Activity | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the monitor thread (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="lookaside-watchdog", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the monitor thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- work -----------------------------------------------------------------------------------
    @contextmanager
    def watch(self, kind: str, detail: str) -> Iterator[Activity]:
        """Register one unit of work for the duration of the block."""
        activity = Activity(kind, detail, time.monotonic())
        with self._cond:
            token = next(self._ids)
            self._active[token] = activity
            self._cond.notify_all()
        try:
            yield activity
        finally:
            self._end(token, activity)

    def _end(self, token: int, activity: Activity) -> None:
        with self._events:
            with self._cond:
                self._active.pop(token, None)
                recovered = self._flagged is activity
                if recovered:
                    self._flagged = None
                self._cond.notify_all()
            if recovered:
                self._call(self._on_recover, activity, time.monotonic() - activity.started)

    def health(self) -> EngineHealth:
        """The engine's health now (from the work registered at this moment)."""
        with self._cond:
            oldest = self._oldest()
        if oldest is None:
            return HEALTHY
        age = time.monotonic() - oldest.started
        if age < self.stall_s:
            return HEALTHY
        return EngineHealth(
            stalled=True,
            reason=(
                f"the engine is stalled: a {oldest.describe()} has run {age:.1f} s, over "
                f"engine_stall_s={self.stall_s:g}"
            ),
            since=oldest.started,
            stalled_for_s=age,
            dead=age >= self.dead_s,
        )

    # -- monitor --------------------------------------------------------------------------------
    def _oldest(self) -> Activity | None:
        return min(self._active.values(), key=lambda a: a.started, default=None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    oldest = self._oldest()
                    if oldest is None or self._flagged is not None:
                        self._cond.wait()  # woken when work starts or ends, or at stop
                        continue
                    due = oldest.started + self.stall_s - time.monotonic()
                    if due <= 0:
                        break
                    self._cond.wait(due)
            self._flag()

    def _flag(self) -> None:
        with self._events:
            with self._cond:
                oldest = self._oldest()
                if oldest is None or self._flagged is not None:
                    return
                age = time.monotonic() - oldest.started
                if age < self.stall_s:
                    return
                self._flagged = oldest
            self._call(self._on_stall, oldest, age)

    @staticmethod
    def _call(callback: Callable[[Activity, float], None], activity: Activity, age: float) -> None:
        try:
            callback(activity, age)
        except Exception:  # the watchdog must outlive a failing callback
            log.exception("engine watchdog callback failed for %s", activity.describe())
