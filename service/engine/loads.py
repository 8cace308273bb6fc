"""Loading an adapter into the engine's bank: one worker command when the copy is cheap.

Threads and what they own:

- **engine worker** (``lookaside-engine``): owns the bank. It applies every bank step between two
  batches (``Engine.call``), so a slot is never written while a batch reads it. Before
  ``Engine.start`` (tests, start-up) ``Engine.call`` applies a step on the caller's thread: no
  batch runs yet.
- **any thread** (registry loader threads, the app's warm-up, tests) calls
  :meth:`EngineLoads.submit` and gets a future that completes once the adapter is published (or
  failed); it never runs a step itself and waits on the future bounded (the registry's loader
  gives up once :meth:`Engine.health` says dead).
- **engine loader** (``lookaside-loader``, one thread owned by :class:`EngineLoads`): only the
  three-step path below, for one large CUDA copy at a time.

The inline path (the CPU, and adapters of at most :data:`INLINE_COPY_BYTES` on CUDA): ``submit``
enqueues ONE worker command (an :class:`_Install`) that reserves a slot (a full stack first grows
to the size :func:`service.residency.grown_capacity` decides, capped by the device tier's byte
budget, :mod:`service.engine.device_tier`: between batches, where no route holds it), copies the
tensors into it (``bank.load``; on the CPU a memcpy, on CUDA an asynchronous copy on the side
stream) and publishes it; a failure aborts the reservation in the
same command. The worker drains every queued command at a batch boundary, so the N loads
submitted during one forward are all published at the next boundary, back to back; the command
is watched as a ``bank command``. The bank skips its finite scan iff the checkpoint is a
:class:`~lookaside.checkpoint.ValidatedCheckpoint` (or a packed one).

The three-step path (CUDA, adapters over :data:`INLINE_COPY_BYTES`), so traffic never waits on
a long copy: **reserve** (worker) -> **copy** (loader thread, watched as an ``adapter load``,
while batches run: the slot is not routable yet) -> **publish** (worker); the loader waits on the
worker bounded, and a failure after the reserve gives the slot back (abort, on the worker).

Giving up (nothing is left reserved or published by a load whose future failed): once
:meth:`Engine.health` reports the engine dead (the registry's loader asks it while it waits), or
once the engine has stopped with its worker still busy, :meth:`EngineLoads.give_up` fails every
inline load not applied yet with :class:`~service.errors.NotReady`, and the worker skips it when
it reaches it; one being applied at that moment (the stuck command itself) is taken back
(removed) by the worker when it ends. The three-step path gives up the same way on its own
bounded waits (the step given up on is cancelled, or taken back when it ends). After stop,
``submit`` fails at once with :class:`~service.errors.NotReady` (the worker refuses commands).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

import torch

from lookaside.bank import AdapterBank, PackedAdapter, Reservation
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.checkpoint.compat import require_backbone
from service.engine.device_tier import DeviceTier
from service.errors import NotReady

if TYPE_CHECKING:
    from service.engine.watchdog import EngineHealth, Watchdog

__all__ = ["INLINE_COPY_BYTES", "EngineLoads", "Loadable", "copies_inline"]

log = logging.getLogger("service.engine")
T = TypeVar("T")
Loadable = AdapterCheckpoint | PackedAdapter
"""What a load takes: a checkpoint, or an adapter packed once from a validated one."""

WAIT_SLICE_S = 0.5
"""How often the loader, waiting on the worker, checks whether the engine is dead or stopped."""
INLINE_COPY_BYTES = 4 << 20
"""On CUDA, adapters of at most this many tensor bytes load in one worker command; larger ones
copy on the loader thread (three steps). On the CPU every load is one command."""


class _Worker(Protocol):
    """What the loader needs of the engine (``service.engine.Engine`` provides it)."""

    bank: AdapterBank
    tier: DeviceTier
    watchdog: Watchdog

    def call(self, fn: Callable[[], T], *, what: str = "a bank command") -> Future[T]:
        """Run ``fn`` on the worker thread between two batches."""
        ...

    def health(self) -> EngineHealth:
        """Whether the engine is stalled or dead."""
        ...


@dataclass(eq=False)
class _Install:
    """One inline load: queued -> running (worker) -> done; or abandoned (:meth:`give_up`).
    Whoever moves it to ``done`` or ``abandoned`` (under the loads' lock) completes ``future``."""

    checkpoint: Loadable
    target: str
    future: Future[None] = field(default_factory=Future)
    state: Literal["queued", "running", "done", "abandoned"] = "queued"


def tensor_bytes(checkpoint: Loadable) -> int:
    """Bytes a load copies (the checkpoint's tensors, or the packed buffer)."""
    if isinstance(checkpoint, PackedAdapter):
        return checkpoint.nbytes
    return sum(t.numel() * t.element_size() for t in checkpoint.tensors.values())


def copies_inline(device: torch.device, nbytes: int) -> bool:
    """Whether a load of ``nbytes`` tensor bytes is one worker command (module docstring)."""
    return device.type != "cuda" or nbytes <= INLINE_COPY_BYTES


class EngineLoads:
    """The engine's loads: inline worker commands, and the loader thread for big CUDA copies."""

    def __init__(self, engine: _Worker) -> None:
        self._engine = engine
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lookaside-loader")
        self._lock = threading.Lock()
        self._pending: set[_Install] = set()
        """Inline loads submitted and not finished (guarded by ``_lock``)."""
        self.stopped = threading.Event()
        """Set by the engine once its worker has exited (or its join gave up): waits end."""
        self.commands = 0
        """Inline load commands applied by the worker (tests count them)."""

    def submit(self, checkpoint: Loadable, adapter_id: str) -> Future[None]:
        """Queue the load of ``checkpoint`` as ``adapter_id`` (any thread)."""
        if not copies_inline(self._engine.bank.device, tensor_bytes(checkpoint)):
            try:
                return self._pool.submit(self._load, checkpoint, adapter_id)
            except RuntimeError:  # the pool is shut down: the engine has stopped
                return _refused()
        install = _Install(checkpoint, adapter_id)
        with self._lock:
            self._pending.add(install)
        queued = self._engine.call(lambda: self._install(install), what=f"load {adapter_id}")
        if queued.done() and queued.exception() is not None:  # refused: the engine has stopped
            with self._lock:
                self._pending.discard(install)
            if not install.future.done():
                return _refused()
        return install.future

    def give_up(self, why: str, reason: str | None = None) -> None:
        """Fail every inline load not applied yet (the worker skips it) and mark a running one
        to be taken back when it ends (module docstring). Any thread."""
        with self._lock:
            pending = [(i, i.state) for i in self._pending if i.state in ("queued", "running")]
            for install, _ in pending:
                install.state = "abandoned"
        for install, state in pending:
            error = NotReady(f"load {install.target} did not run: {why}", reason=reason)
            if state == "running" or install.future.set_running_or_notify_cancel():
                install.future.set_exception(error)

    def shutdown(self) -> None:
        """Fail inline loads the worker will not apply; run what the loader has queued (each
        fails at once once the worker refuses steps) and join."""
        self.give_up("the engine has stopped")
        self._pool.shutdown(wait=True)

    def _install(self, install: _Install) -> None:
        """Worker: reserve -> copy -> publish in one command; abort on failure."""
        with self._lock:
            if install.state == "abandoned" or not install.future.set_running_or_notify_cancel():
                self._pending.discard(install)  # given up on, or cancelled by its caller
                return
            install.state = "running"
        started, bank, target = time.perf_counter(), self._engine.bank, install.target
        self.commands += 1
        error: BaseException | None = None
        try:
            reservation = _reserve(bank, self._engine.tier, install.checkpoint, target)
            try:
                bank.load(reservation, install.checkpoint)  # the type decides the finite scan
                bank.publish(reservation)
            except BaseException:
                bank.abort(reservation)
                raise
        except BaseException as exc:  # handed to the caller, never kills the worker
            error = exc
        self._engine.tier.refresh(bank)  # before its caller can see the future complete
        with self._lock:
            self._pending.discard(install)
            abandoned = install.state != "running"  # give_up marked it meanwhile
            install.state = "abandoned" if abandoned else "done"
        if abandoned:  # its caller gave up while it ran: take the publish back
            if error is None:
                bank.remove(target)
            return
        if error is not None:
            install.future.set_exception(error)
            return
        install.future.set_result(None)
        log.info("loaded adapter %s in %.1f ms", target, (time.perf_counter() - started) * 1e3)

    def _load(self, checkpoint: Loadable, target: str) -> None:
        """Three steps (loader thread): reserve (worker) -> copy (here) -> publish (worker)."""
        started = time.perf_counter()
        engine, bank = self._engine, self._engine.bank
        reservation = self._on_worker(
            lambda: _reserve(bank, engine.tier, checkpoint, target),
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


def _refused() -> Future[None]:
    refused: Future[None] = Future()
    refused.set_exception(NotReady("the engine has stopped"))
    return refused


def _undo(future: Future[T], undo: Callable[[T], object]) -> None:
    """Apply ``undo`` to a step's result, if it succeeded (it failed: nothing to take back)."""
    if not future.cancelled() and future.exception() is None:
        undo(future.result())


def _reserve(
    bank: AdapterBank, tier: DeviceTier, checkpoint: Loadable, adapter_id: str
) -> Reservation:
    """A slot for ``checkpoint`` (worker thread) within the device tier's budget; a full stack
    grows first (module docstring, :mod:`service.engine.device_tier`)."""
    manifest = checkpoint.manifest
    if bank.fingerprint is not None:
        require_backbone(manifest, name=bank.backbone_cfg.name, fingerprint=bank.fingerprint)
    head, config = manifest.head_config(), manifest.adapter_config()
    if adapter_id not in bank:  # else reserve refuses it, and nothing should grow first
        tier.make_room(bank, manifest.method, config, head)
    return bank.reserve(adapter_id, manifest.method, manifest.config, head)
