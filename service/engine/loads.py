"""Loading an adapter into the engine's bank: one sequence, top to bottom, on the engine's loader.

Threads:

- **engine loader** (``lookaside-loader``, one thread owned by :class:`EngineLoads`): runs
  :meth:`EngineLoads._load` for one load at a time, start to end. It copies tensors into a
  reserved slot (watched by the watchdog as an ``adapter load``) and waits, bounded, for the
  worker to apply the steps that touch the bank's routing.
- **engine worker** (``lookaside-engine``): applies the reserve, publish and abort steps between
  two batches (``Engine.call``), so a slot is never written while a batch reads it. Before
  ``Engine.start`` (tests, start-up) ``Engine.call`` applies them on the loader thread itself:
  no batch runs yet.
- Any thread (registry loader threads, the app's warm-up, tests) calls :meth:`EngineLoads.submit`
  and gets a future; it never runs a step itself.

The sequence (the bank's slot lifecycle, docs/design.md §4), so traffic never waits on the copy:

1. **reserve** (worker): a free slot of the adapter's stack. A full stack first grows to the
   size :func:`service.residency.grown_capacity` decides; that happens between batches,
   where no route holds the stack, and never while another load is pending: loads run one at a time
   here, and the previous load's publish or abort was applied (the worker applies commands in order)
   before this reserve.
2. **copy** (loader thread): the tensors into the reserved slot while batches keep running (the
   slot is not routable yet). The bank skips its finite scan iff the checkpoint is a
   :class:`~lookaside.checkpoint.ValidatedCheckpoint`.
3. **publish** (worker): the slot becomes routable.

A failure after the reserve gives the slot back (abort, on the worker) and fails the returned
future only. Every wait on the worker is bounded: it gives up once the engine reports itself
dead, or once the engine has stopped and its worker will apply nothing more, and the step it
gave up on never takes effect (cancelled, or taken back when it ends); at stop, loads
still queued here run and fail at once with :class:`~service.errors.NotReady` (the worker
refuses new steps), so none is left hanging.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import TYPE_CHECKING, Protocol, TypeVar

from lookaside.bank import AdapterBank, Reservation
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.checkpoint.compat import require_backbone
from lookaside.errors import BankFull
from service.errors import NotReady
from service.residency import grown_capacity

if TYPE_CHECKING:
    from service.engine.watchdog import EngineHealth, Watchdog

__all__ = ["EngineLoads"]

log = logging.getLogger("service.engine")
T = TypeVar("T")

WAIT_SLICE_S = 0.5
"""How often the loader, waiting on the worker, checks whether the engine is dead or stopped."""


class _Worker(Protocol):
    """What the loader needs of the engine (``service.engine.Engine`` provides it)."""

    bank: AdapterBank
    watchdog: Watchdog

    def call(self, fn: Callable[[], T], *, what: str = "a bank command") -> Future[T]:
        """Run ``fn`` on the worker thread between two batches."""
        ...

    def health(self) -> EngineHealth:
        """Whether the engine is stalled or dead."""
        ...


class EngineLoads:
    """The engine's loader thread and the load sequence it runs (module docstring)."""

    def __init__(self, engine: _Worker) -> None:
        self._engine = engine
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lookaside-loader")
        self.stopped = threading.Event()
        """Set by the engine once its worker has exited (or its join gave up): waits end."""

    def submit(self, checkpoint: AdapterCheckpoint, adapter_id: str) -> Future[None]:
        """Queue the load of ``checkpoint`` as ``adapter_id`` (any thread)."""
        try:
            return self._pool.submit(self._load, checkpoint, adapter_id)
        except RuntimeError:  # the pool is shut down: the engine has stopped
            refused: Future[None] = Future()
            refused.set_exception(NotReady("the engine has stopped"))
            return refused

    def shutdown(self) -> None:
        """Run what is queued (each fails at once once the worker refuses steps) and join."""
        self._pool.shutdown(wait=True)

    def _load(self, checkpoint: AdapterCheckpoint, target: str) -> None:
        """Reserve (worker) -> copy (here) -> publish (worker); abort on a failed copy."""
        started = time.perf_counter()
        engine, bank = self._engine, self._engine.bank
        reservation = self._on_worker(
            lambda: _reserve(bank, checkpoint, target),
            f"reserve a slot for {target}",
            undo=lambda r: engine.call(lambda: bank.abort(r), what=f"abort the load of {target}"),
        )
        try:
            with engine.watchdog.watch("adapter load", f"copy of {target} into its slot"):
                engine.bank.load(reservation, checkpoint)  # the type decides the finite scan
        except BaseException:
            engine.call(lambda: bank.abort(reservation), what=f"abort the load of {target}")
            raise
        self._on_worker(
            lambda: bank.publish(reservation),
            f"publish {target}",
            undo=lambda _: engine.call(lambda: bank.remove(target), what=f"unload {target}"),
        )
        log.info("loaded adapter %s in %.1f ms", target, (time.perf_counter() - started) * 1e3)

    def _on_worker(self, fn: Callable[[], T], what: str, *, undo: Callable[[T], object]) -> T:
        """Run ``fn`` on the worker between batches and wait for it, bounded: give up once the
        engine is dead, or stopped with ``fn`` not run. A step given up on never takes effect:
        it is cancelled if it has not started, else ``undo`` (which only enqueues) is applied to
        its result when it ends, so a failed load leaves no slot reserved or published."""
        future = self._engine.call(fn, what=what)
        while True:
            try:
                return future.result(timeout=WAIT_SLICE_S)
            except FuturesTimeout:
                health = self._engine.health()
                if health.dead:
                    why, reason = f"the engine is stuck ({health.reason})", "engine_stalled"
                elif self.stopped.is_set() and not future.done():
                    why, reason = "the engine has stopped", None
                else:
                    continue
            if not future.cancel():  # running or ran meanwhile: take its effect back
                future.add_done_callback(lambda f: _undo(f, undo))
            raise NotReady(f"{what} did not run: {why}", reason=reason)


def _undo(future: Future[T], undo: Callable[[T], object]) -> None:
    """Apply ``undo`` to a step's result, if it succeeded (it failed: nothing to take back)."""
    if not future.cancelled() and future.exception() is None:
        undo(future.result())


def _reserve(bank: AdapterBank, checkpoint: AdapterCheckpoint, adapter_id: str) -> Reservation:
    """A slot for ``checkpoint`` (worker thread); a full stack grows first (module docstring)."""
    manifest = checkpoint.manifest
    if bank.fingerprint is not None:
        require_backbone(manifest, name=bank.backbone_cfg.name, fingerprint=bank.fingerprint)
    head = manifest.head_config()
    try:
        return bank.reserve(adapter_id, manifest.method, manifest.config, head)
    except BankFull:
        config = manifest.adapter_config()
        capacity = grown_capacity(bank.stack_capacity(manifest.method, config))
        bank.grow(manifest.method, config, capacity)  # between batches: no route holds it
        log.info("grew the %s stack to %d slots", manifest.method, capacity)
        return bank.reserve(adapter_id, manifest.method, manifest.config, head)
