"""The engine: a bounded queue, a batcher, and the one worker thread that owns the model.

Threads and what they own (nothing else touches these objects):

- **event loop** (uvicorn): HTTP, settings, the registry's bookkeeping; it only calls
  :meth:`Engine.submit`, :meth:`Engine.load_adapter`, :meth:`Engine.unload_adapter`, which enqueue
  and return futures, and :meth:`Engine.health`, which reads the watchdog.
- **featurize pool** (:mod:`service.featurize`): decoding and features, before anything is queued,
  so a bad upload fails alone and never reaches a batch.
- **engine worker** (this module, one thread named ``lookaside-engine``): the backbone, the
  :class:`~lookaside.adapters.bank.AdapterBank` and the :class:`~lookaside.model.MultiAdapterModel`.
  It alternates between applying pending bank commands (load / unload / grow) and running one
  batch, so a slot is never written while a batch reads it and a stack never grows under a batch.
- **loader** (``lookaside-loader``, one thread): copies a reserved adapter's tensors into its slot
  while batches keep running.
- **watchdog** (:mod:`service.watchdog`, a daemon thread named ``lookaside-watchdog``): owns
  nothing of the model; it watches every forward, bank command and adapter copy, and when one
  runs longer than ``stall_s`` it logs the batch (adapters, request ids, rows) at ERROR, sets the
  ``lookaside_engine_stalled`` gauge and fails every queued job with 503 (they would only time
  out behind it). Until that work ends, :meth:`Engine.submit` refuses with 503 and
  :meth:`Engine.health` reports the stall (``/readyz`` 503; ``/healthz`` 503 after ``dead_s``, so
  an orchestrator restarts the process). When the work ends the engine is ready again (logged).

Batching (LitServe's loop, with vLLM's per-row adapter index): the oldest queued job fixes the
batch's token grid (frames x mel bins: rows of one forward must share it); the batcher then takes
every queued job of that grid in arrival order, mixing adapters (``mixing=on``) or only the first
job's adapter (``mixing=off``), until ``max_batch_size`` rows or ``max_wait_ms`` after the first
job arrived. Jobs of other grids stay queued for the next batch.

Per-forward budget: a forward also holds at most ``max_batch_tokens`` patch tokens (rows x the
tokens one row of that grid gives on the backbone, :func:`lookaside.backbone.window_tokens`), so
no job can make one forward arbitrarily long. A job with more rows than one forward takes runs in
chunks: each batch takes the next rows of it, and the rest goes back to the end of the queue, so
its chunks interleave with other jobs instead of holding the engine; its future resolves with
every row, in order, after its last chunk. A job whose single row is over the budget is refused
at submit (:class:`OverBudget`, 422); upload validation refuses such adapters before (the service
passes its budget as ``CheckpointLimits.max_window_tokens``).

Task kinds (:mod:`lookaside.tasks`): every job names its kind (``clip`` for ``POST /classify``,
``av_events`` for ``POST /av-event``), which says what a row is, its grid, its tokens and its
forward; jobs batch only with jobs of the same kind and grid (mixing adapters). Right after a
batch of a kind whose forwards are long (:attr:`~lookaside.tasks.TaskKind.yields`: AV events),
the oldest job of another kind goes first, so an AV stream never holds audio rows back for more
than one forward.

Failure isolation: if a forward raises, every job of that batch is retried alone, so only the
culprit fails (:class:`~service.errors.EngineFailure`, logged with its trace); the engine keeps
serving. A job past its deadline when the batcher reaches it (including its later chunks) is
answered 504 without running.

CUDA path: features are stacked into a pinned host buffer and copied with ``non_blocking=True``;
the forward runs under ``torch.inference_mode`` and ``torch.autocast`` with the settings' dtype;
logits come back as fp32 on the host. The CPU path is the same code without pinning.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor

from lookaside.adapters.bank import AdapterBank, Reservation
from lookaside.checkpoint.compat import require_backbone
from lookaside.errors import BankFull
from lookaside.model import MultiAdapterModel
from lookaside.tasks import AV_EVENTS, CLIP, Inputs, TaskKind
from service.errors import BadRequest, EngineFailure, NotReady, QueueFull, RequestTimeout
from service.metrics import ServiceMetrics
from service.watchdog import Activity, EngineHealth, Watchdog

if TYPE_CHECKING:
    from lookaside.adapters.base import AdapterConfig
    from lookaside.backbone import VisionTransformer
    from lookaside.checkpoint import AdapterCheckpoint

__all__ = ["Engine", "EngineHealth", "Job", "OverBudget"]

log = logging.getLogger("service.engine")
T = TypeVar("T")
_SHOWN_IDS = 16
"""Most request ids a batch's description names (in the stall log line and reason)."""


class OverBudget(BadRequest, ValueError):
    """One row (window) of a job needs more tokens than one forward may hold (422)."""


@dataclass(eq=False)
class Job:
    """One request's rows of one task kind for one adapter, answered together.

    A job with more rows than one forward takes runs in chunks (see the module docstring):
    ``start`` is the first row no batch has taken yet, ``parts`` the logits of the chunks run.
    """

    task: TaskKind
    """What a row is, which rows batch together and which forward serves them."""
    inputs: Inputs
    """The task kind's input tensors (float32, host); dimension 0 is the row."""
    adapter_id: str | None
    """Bank id (``name@version``); None runs the bare backbone (warm-up)."""
    request_id: str
    deadline: float
    """``time.monotonic()`` after which the job is answered 504 instead of run."""
    future: Future[Tensor] = field(default_factory=Future)
    """Resolves to the per-row logits (``[rows, ...classes]`` fp32 on the host)."""
    enqueued: float = field(default_factory=time.monotonic)
    tokens_per_row: int = 1
    """Patch tokens one row gives on the backbone (set by the engine at submit)."""
    start: int = 0
    """Rows before this one were taken by a batch (worker thread only)."""
    parts: list[Tensor] = field(default_factory=list)
    """Logits of the chunks run so far, in row order (worker thread only)."""

    @property
    def rows(self) -> int:
        return self.task.rows(self.inputs)

    @property
    def remaining(self) -> int:
        """Rows no batch has taken yet."""
        return self.rows - self.start

    @property
    def grid(self) -> tuple[int, ...]:
        """The shape every row of one forward must share (the task kind's grid)."""
        return self.task.grid(self.inputs)

    @property
    def batch_key(self) -> tuple[str, tuple[int, ...]]:
        """Jobs with equal keys may share a forward."""
        return self.task.name, self.grid


@dataclass(frozen=True, eq=False)
class _Slice:
    """Rows ``[start, stop)`` of one job, as one batch takes them."""

    job: Job
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(eq=False)
class _Command:
    fn: Callable[[], Any]
    future: Future[Any]
    what: str


class Engine:
    """Owns the backbone, the bank and the model; runs every forward on one worker thread.

    Args:
        backbone: the frozen backbone (already on ``device``; never copied).
        device: where the model runs.
        compute_dtype: autocast dtype of the forward (fp32 disables autocast).
        max_batch_size: most rows per forward.
        max_wait_ms: how long to wait for more rows after a batch's first job arrived.
        queue_capacity: most queued jobs; beyond it :meth:`submit` raises :class:`QueueFull`.
        mixing: mix adapters in one forward (True) or serve one adapter per batch (False).
        bank_capacity: slots per adapter stack at creation.
        metrics: where batch sizes, waits and forward times are recorded.
        max_batch_tokens: most patch tokens (rows x tokens per row) in one forward.
        stall_s: a forward, bank command or adapter load running longer than this marks the
            engine stalled (not ready; queued jobs fail with 503).
        dead_s: running longer than this, :meth:`health` says dead (liveness fails).
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        *,
        device: torch.device,
        compute_dtype: torch.dtype = torch.float32,
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        queue_capacity: int = 256,
        mixing: bool = True,
        bank_capacity: int = 8,
        metrics: ServiceMetrics | None = None,
        max_batch_tokens: int = 8192,
        stall_s: float = 120.0,
        dead_s: float = 600.0,
    ) -> None:
        if max_batch_size < 1 or max_batch_tokens < 1:
            raise ValueError(
                f"need max_batch_size >= 1 and max_batch_tokens >= 1, got {max_batch_size} and "
                f"{max_batch_tokens}"
            )
        self.backbone = backbone.eval()
        self.device = device
        self.compute_dtype = compute_dtype
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_capacity = queue_capacity
        self.mixing = mixing
        self.metrics = metrics or ServiceMetrics()
        self.bank = AdapterBank.for_backbone(backbone, capacity=bank_capacity, device=device)
        self.model = MultiAdapterModel(backbone, self.bank).eval()
        self._queue: collections.deque[Job] = collections.deque()
        self._commands: collections.deque[_Command] = collections.deque()
        self._cond = threading.Condition()
        self._accepting = True  # jobs may queue before start(); they run once the worker starts
        self._stop = False
        self._closed = False
        self._drain = True
        self._thread: threading.Thread | None = None
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="lookaside-loader")
        self._pending_loads = 0  # reserved, not yet published or aborted (worker thread only)
        self._parked: list[Callable[[], None]] = []
        """Loads waiting for a pending one to settle before their full stack can grow."""
        self.batches_run = 0
        self._last_task: TaskKind | None = None
        self.watchdog = Watchdog(
            stall_s=stall_s, dead_s=dead_s, on_stall=self._stalled, on_recover=self._recovered
        )

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (jobs submitted before run now) and the watchdog."""
        if self._thread is not None:
            return
        self.watchdog.start()
        self._thread = threading.Thread(target=self._run, name="lookaside-engine", daemon=True)
        self._thread.start()

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting; answer what is queued (``drain``) or fail it with 503; join the worker.

        Blocking: call it from a thread (the lifespan uses ``asyncio.to_thread``).
        """
        with self._cond:
            self._accepting = False
            self._stop = True
            self._drain = drain
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._loader.shutdown(wait=True)
        self.watchdog.stop()

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def alive(self) -> bool:
        """The worker thread is running (readiness reports it)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def health(self) -> EngineHealth:
        """Stalled (not ready) or dead (liveness fails), and why; see :mod:`service.watchdog`."""
        return self.watchdog.health()

    # -- requests -------------------------------------------------------------------------------
    def submit(
        self,
        features: Tensor,
        adapter_id: str | None,
        *,
        request_id: str = "-",
        timeout_s: float = 30.0,
    ) -> Future[Tensor]:
        """Queue one clip's windows ``[rows, frames, mel]`` (the ``clip`` task kind).

        Returns a future of ``[rows, classes]`` logits; raises as :meth:`submit_task`.
        """
        return self.submit_task(
            CLIP, (features,), adapter_id, request_id=request_id, timeout_s=timeout_s
        )

    def submit_av(
        self,
        spec: Tensor,
        pixels: Tensor,
        adapter_id: str,
        *,
        request_id: str = "-",
        timeout_s: float = 30.0,
    ) -> Future[Tensor]:
        """Queue one video's windows for one audio-visual adapter (the ``av_events`` kind).

        Args:
            spec: ``[windows, segments, frames, mel]`` normalised fbank per one-second segment.
            pixels: ``[windows, segments, 3, height, width]`` normalised frames.

        Returns a future of ``[windows, segments, classes]`` logits; raises as
        :meth:`submit_task`.
        """
        return self.submit_task(
            AV_EVENTS, (spec, pixels), adapter_id, request_id=request_id, timeout_s=timeout_s
        )

    def submit_task(
        self,
        task: TaskKind,
        inputs: Inputs,
        adapter_id: str | None,
        *,
        request_id: str = "-",
        timeout_s: float = 30.0,
    ) -> Future[Tensor]:
        """Queue one request's rows of ``task`` for one adapter.

        Returns a future of the per-row logits. Raises :class:`ValueError` for inputs of the
        wrong shape, :class:`OverBudget` (422) when one row needs more than ``max_batch_tokens``
        tokens, :class:`QueueFull` (429) when the queue is at capacity and :class:`NotReady`
        (503) when the engine is stalled or stopping.
        """
        task.check_inputs(inputs)  # ConfigError, a ValueError: a caller's bug, not a client's
        tokens = task.tokens_per_row(self.backbone.cfg, inputs)
        job = Job(task, inputs, adapter_id, request_id, time.monotonic() + timeout_s)
        return self._enqueue(job, tokens)

    def _enqueue(self, job: Job, tokens_per_row: int) -> Future[Tensor]:
        if tokens_per_row > self.max_batch_tokens:
            raise OverBudget(
                f"one window of this request for adapter {job.adapter_id} (grid "
                f"{'x'.join(map(str, job.grid))}) is {tokens_per_row} tokens, over the per-forward "
                f"budget max_batch_tokens={self.max_batch_tokens}: this server cannot run the "
                "adapter; raise LOOKASIDE_MAX_BATCH_TOKENS, or use an adapter with fewer mel bins "
                "or frames per window"
            )
        job.tokens_per_row = tokens_per_row
        health = self.watchdog.health()
        if health.stalled:
            raise NotReady(
                f"{health.reason}; retry after the Retry-After delay or on another replica",
                reason="engine_stalled",
            )
        with self._cond:
            if not self._accepting:
                raise NotReady("the server is shutting down; retry on another replica or later")
            if len(self._queue) >= self.queue_capacity:
                raise QueueFull(
                    f"the queue is full ({self.queue_capacity} jobs); retry after the "
                    "Retry-After delay, or raise LOOKASIDE_QUEUE_CAPACITY"
                )
            self._queue.append(job)
            depth = len(self._queue)
            self._cond.notify_all()
        self.metrics.safe(lambda: self.metrics.queue_depth.set(depth))
        return job.future

    # -- bank commands (applied between batches on the worker) ---------------------------------
    def call(self, fn: Callable[[], T], *, what: str = "a bank command") -> Future[T]:
        """Run ``fn`` on the worker thread between two batches (the only place the bank changes).

        ``what`` names it to the watchdog (a command running longer than ``stall_s`` stalls the
        engine like a forward would)."""
        fut: Future[T] = Future()
        with self._cond:
            if self._closed:
                fut.set_exception(NotReady("the engine has stopped"))
                return fut
            self._commands.append(_Command(fn, fut, what))
            self._cond.notify_all()
        if self._thread is None:  # not started (unit use): run now on the caller's thread
            self._apply_commands()
        return fut

    def load_adapter(
        self,
        checkpoint: AdapterCheckpoint,
        adapter_id: str | None = None,
        *,
        validated: bool = False,
    ) -> Future[None]:
        """Load a checkpoint into the bank as ``adapter_id`` (default ``name@version``).

        ``validated=True``: ``checkpoint`` came from ``load_checkpoint`` /
        ``validate_checkpoint_bytes`` (every value already scanned), so the bank skips its own
        finite scan (``AdapterBank.load(..., validated=True)``); names and shapes are still checked.

        The bank's slot lifecycle (docs/design.md §4), so traffic never waits on the copy:
        reserve a free slot on the worker between batches (a full stack is grown there, where no
        route holds it) -> copy the tensors on the loader thread while batches keep running (the
        slot is not routable yet) -> publish on the worker between batches. A failure at any step
        gives the slot back and fails the returned future only.
        """
        target = adapter_id or checkpoint.manifest.id
        reserving = f"reserve a slot for {target}"
        done: Future[None] = Future()
        done.set_running_or_notify_cancel()
        started = time.perf_counter()

        def fail(exc: BaseException) -> None:
            if not done.done():
                done.set_exception(exc)

        def publish(reservation: Reservation) -> None:
            try:
                self.bank.publish(reservation)
            finally:
                self._load_settled()
            log.info("loaded adapter %s in %.1f ms", target, (time.perf_counter() - started) * 1e3)
            done.set_result(None)

        def abort(reservation: Reservation) -> None:
            try:
                self.bank.abort(reservation)
            finally:
                self._load_settled()

        def copy(reservation: Reservation) -> None:
            try:
                with self.watchdog.watch("adapter load", f"copy of {target} into its slot"):
                    self.bank.load(reservation, checkpoint.tensors, validated=validated)
            except BaseException as exc:
                self.call(lambda: abort(reservation), what=f"abort the load of {target}")
                fail(exc)
                return
            _chain(self.call(lambda: publish(reservation), what=f"publish {target}"), fail)

        def reserve() -> None:
            try:
                reservation = self._reserve(checkpoint, target)
            except _GrowLater:  # retried once the pending load publishes or aborts
                self._parked.append(lambda: _chain(self.call(reserve, what=reserving), fail))
                return
            self._pending_loads += 1
            try:
                self._loader.submit(copy, reservation)
            except RuntimeError as exc:  # loader shut down: the engine is stopping
                abort(reservation)
                fail(NotReady(f"the engine is stopping: {exc}"))

        _chain(self.call(reserve, what=reserving), fail)
        return done

    def _load_settled(self) -> None:
        """A load published or aborted (worker): retry the loads parked behind it."""
        self._pending_loads -= 1
        parked, self._parked = self._parked, []
        for retry in parked:
            retry()

    def unload_adapter(self, adapter_id: str) -> Future[None]:
        """Remove an adapter between batches (unroutable at once; its slot is zeroed and reused
        after the last route holding it is released)."""
        return self.call(lambda: self.bank.remove(adapter_id), what=f"unload {adapter_id}")

    def resident(self) -> list[str]:
        """Adapter ids published in the bank."""
        return self.bank.ids()

    def _reserve(self, checkpoint: AdapterCheckpoint, adapter_id: str) -> Reservation:
        """A slot for ``checkpoint`` (worker thread); a full stack is doubled first."""
        manifest = checkpoint.manifest
        if self.bank.fingerprint is not None:
            require_backbone(
                manifest, name=self.bank.backbone_cfg.name, fingerprint=self.bank.fingerprint
            )
        head = manifest.head_config()
        try:
            return self.bank.reserve(adapter_id, manifest.method, manifest.config, head)
        except BankFull:
            if self._pending_loads:  # the bank refuses to grow a stack with a load pending
                raise _GrowLater() from None
            config = manifest.adapter_config()
            capacity = 2 * max(self._capacity(manifest.method, config), 1)
            self.bank.grow(manifest.method, config, capacity)  # between batches: no route holds it
            log.info("grew the %s stack to %d slots", manifest.method, capacity)
            return self.bank.reserve(adapter_id, manifest.method, manifest.config, head)

    def _capacity(self, method: str, config: AdapterConfig) -> int:
        """Current slots of the stack for (method, config): used + free."""
        used = sum(
            1
            for e in self.bank.entries.values()
            if e.method == method and e.config == config and e.stack_key is not None
        )
        return used + self.bank.free_slots(method, config)

    # -- watchdog -------------------------------------------------------------------------------
    def _stalled(self, activity: Activity, age: float) -> None:
        """The watchdog saw ``activity`` overrun ``stall_s`` (monitor thread): say which work,
        and fail the queued jobs with 503 now instead of at their own timeouts."""
        with self._cond:
            queued = list(self._queue)
            self._queue.clear()
        log.error(
            "engine stalled: %s has run %.1f s, over engine_stall_s=%g; not ready until it ends, "
            "failing %d queued jobs with 503",
            activity.describe(),
            age,
            self.watchdog.stall_s,
            len(queued),
        )

        def record() -> None:
            self.metrics.engine_stalled.set(1)
            self.metrics.engine_stalls.inc()
            self.metrics.queue_depth.set(0)

        self.metrics.safe(record)
        reason = (
            f"the engine is stalled by a {activity.kind} running over engine_stall_s="
            f"{self.watchdog.stall_s:g}; retry after the Retry-After delay or on another replica"
        )
        for job in queued:
            _fail(job, NotReady(reason, reason="engine_stalled"))

    def _recovered(self, activity: Activity, duration: float) -> None:
        log.warning(
            "engine recovered: %s ended after %.1f s; ready again", activity.describe(), duration
        )
        self.metrics.safe(lambda: self.metrics.engine_stalled.set(0))

    # -- worker ---------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            batch: list[_Slice] | None = None
            try:
                self._apply_commands()
                batch = self._next_batch()
                if batch is None:
                    if self._finished():
                        break
                    continue
                if batch:
                    self._run_batch(batch)
            except Exception as exc:  # a bug in the loop itself: fail what it held, keep serving
                log.exception("engine loop error; failing the %d jobs it held", len(batch or []))
                for part in batch or []:
                    _fail(
                        part.job,
                        EngineFailure(
                            f"internal engine error ({type(exc).__name__}); the server log "
                            f"has the trace of request {part.job.request_id}"
                        ),
                    )
        self._fail_remaining()
        with self._cond:
            self._closed = True  # call() refuses from now on; what it accepted is applied below
        self._apply_commands()
        parked, self._parked = self._parked, []
        for retry in parked:  # call() now refuses: each parked load fails with NotReady
            retry()

    def _finished(self) -> bool:
        with self._cond:
            return self._stop and not self._commands and (not self._drain or not self._queue)

    def _apply_commands(self) -> None:
        while True:
            with self._cond:
                if not self._commands:
                    return
                cmd = self._commands.popleft()
            if not cmd.future.set_running_or_notify_cancel():
                continue
            try:
                with self.watchdog.watch("bank command", cmd.what):
                    result = cmd.fn()
                cmd.future.set_result(result)
            except BaseException as exc:  # handed to the caller, never kills the worker
                cmd.future.set_exception(exc)

    def _first_job(self) -> Job:
        """The job whose batch key the next batch takes: the oldest, except that right after a
        batch of a kind that :attr:`~lookaside.tasks.TaskKind.yields` (audio-visual events), the
        oldest job of another kind goes first, so its rows never wait behind more than one such
        forward (and those rows, behind more than one other batch). Call with the lock held."""
        oldest = self._queue[0]
        last = self._last_task
        if last is not None and last.yields and oldest.task is last:
            for job in self._queue:
                if job.task is not last:
                    return job
        return oldest

    def _matches(self, job: Job, first: Job) -> bool:
        if job.batch_key != first.batch_key:
            return False
        return self.mixing or job.adapter_id == first.adapter_id

    def _row_cap(self, first: Job) -> int:
        """Most rows of ``first``'s grid one forward may hold: ``max_batch_size`` and the token
        budget (every job of one grid has the same tokens per row)."""
        return max(1, min(self.max_batch_size, self.max_batch_tokens // first.tokens_per_row))

    def _next_batch(self) -> list[_Slice] | None:
        """Wait for work; return the next batch ([] if every taken job was stale), or None when
        there is a command to apply or the engine is stopping with nothing left to run."""
        with self._cond:
            while not self._queue and not self._commands and not self._stop:
                self._cond.wait()
            if self._commands:
                return None
            self._queue = collections.deque(j for j in self._queue if not j.future.done())
            if not self._queue or (self._stop and not self._drain):
                return None
            first = self._first_job()
            cap = self._row_cap(first)
            self._last_task = first.task
            flush_at = first.enqueued + self.max_wait_s
            while not self._stop and not self._commands:
                rows = sum(j.remaining for j in self._queue if self._matches(j, first))
                remaining = flush_at - time.monotonic()
                if rows >= cap or remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, expired, waits = self._take(first, cap)
            depth = len(self._queue)
        self.metrics.safe(lambda: self.metrics.queue_depth.set(depth))
        for wait in waits:
            self.metrics.safe(lambda w=wait: self.metrics.queue_wait.observe(w))  # type: ignore[misc]
        for job in expired:
            ran = f" after {job.start} of its {job.rows} rows ran" if job.start else ""
            _fail(
                job,
                RequestTimeout(
                    f"the request waited past its timeout in the queue{ran}; retry later"
                ),
            )
        return batch

    def _take(self, first: Job, cap: int) -> tuple[list[_Slice], list[Job], list[float]]:
        """Rows of the next forward (lock held): jobs of ``first``'s grid in queue order, each
        whole if it fits, up to ``cap`` rows; a job larger than one forward gives its next rows
        and goes back to the end of the queue with the rest. Returns (batch, jobs past their
        deadline, queue waits of jobs taken for the first time)."""
        now = time.monotonic()
        batch: list[_Slice] = []
        expired: list[Job] = []
        waits: list[float] = []
        rows = 0
        kept: collections.deque[Job] = collections.deque()
        again: list[Job] = []
        while self._queue:
            job = self._queue.popleft()
            if job.future.done():  # cancelled by its client, or failed: drop what is left
                continue
            free = cap - rows
            # a job that fits one forward is never split: it waits for the next batch instead
            if (
                not self._matches(job, first)
                or free <= 0
                or (batch and free < job.remaining <= cap)
            ):
                kept.append(job)
                continue
            if not job.future.running() and not job.future.set_running_or_notify_cancel():
                continue  # the client gave up (timeout): nothing to answer
            if now > job.deadline:
                expired.append(job)
                continue
            if job.start == 0:
                waits.append(now - job.enqueued)
            n = min(job.remaining, free)
            batch.append(_Slice(job, job.start, job.start + n))
            job.start += n
            rows += n
            if job.remaining:
                again.append(job)
        kept.extend(again)
        self._queue = kept
        return batch, expired, waits

    def _run_batch(self, batch: list[_Slice]) -> None:
        try:
            outputs = self._forward(batch)
        except Exception:
            self.metrics.safe(self.metrics.batch_failures.inc)
            ids = ", ".join(p.job.request_id for p in batch)
            log.exception(
                "a batch of %d jobs failed (requests %s); retrying each alone", len(batch), ids
            )
            for part in batch:
                self._run_alone(part)
            return
        for part, out in zip(batch, outputs, strict=True):
            _deliver(part, out)

    def _run_alone(self, part: _Slice) -> None:
        """One job's rows on their own; only that job fails if they raise."""
        job = part.job
        try:
            (out,) = self._forward([part])
        except Exception as exc:
            log.exception(
                "request %s failed in the model (adapter %s)", job.request_id, job.adapter_id
            )
            _fail(
                job,
                EngineFailure(
                    f"the model failed on this request (adapter {job.adapter_id}, "
                    f"{type(exc).__name__}); the server log has the trace of request "
                    f"{job.request_id}"
                ),
            )
            return
        _deliver(part, out)

    def _forward(self, batch: Sequence[_Slice]) -> list[Tensor]:
        """One forward over every row of ``batch`` (watched): the rows' inputs stacked on the
        device, the task kind's forward with each row's adapter, per-slice fp32 host logits
        (``[rows, 0]`` for a slice without adapter: the warm-up)."""
        with self.watchdog.watch("forward", _describe(batch)):
            started = time.perf_counter()
            task = batch[0].job.task
            ids: list[str | None] = [p.job.adapter_id for p in batch for _ in range(p.rows)]
            parts = [task.take(p.job.inputs, p.start, p.stop) for p in batch]
            inputs = tuple(
                self._to_device([part[i] for part in parts]) for i in range(len(parts[0]))
            )
            autocast = (
                torch.autocast(self.device.type, dtype=self.compute_dtype)
                if self.compute_dtype != torch.float32
                else contextlib.nullcontext()
            )
            with torch.inference_mode(), autocast:
                logits = task.forward(self.model, inputs, ids)
            out: list[Tensor] = []
            row = 0
            for part in batch:
                rows = logits[row : row + part.rows]
                row += part.rows
                if part.job.adapter_id is None:
                    out.append(torch.zeros(part.rows, 0))
                else:
                    out.append(torch.stack([r for r in rows if r is not None]).float().to("cpu"))
            self._record(batch, started, len(ids))
            return out

    def _record(self, batch: Sequence[_Slice], started: float, total_rows: int) -> None:
        elapsed = time.perf_counter() - started
        self.batches_run += 1
        adapters = len({p.job.adapter_id for p in batch})
        tokens = sum(p.rows * p.job.tokens_per_row for p in batch)

        def record() -> None:
            self.metrics.forward.observe(elapsed)
            self.metrics.batch_rows.observe(total_rows)
            self.metrics.batch_adapters.observe(adapters)
            self.metrics.batch_tokens.observe(tokens)

        self.metrics.safe(record)

    def _to_device(self, features: list[Tensor]) -> Tensor:
        """Stack the rows on the host (pinned on CUDA) and copy them over asynchronously."""
        if self.device.type != "cuda":
            return torch.cat(features).to(self.device)
        rows = sum(int(f.shape[0]) for f in features)
        staging = torch.empty((rows, *features[0].shape[1:]), dtype=torch.float32, pin_memory=True)
        torch.cat(features, out=staging)
        return staging.to(self.device, non_blocking=True)

    def _fail_remaining(self) -> None:
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        for job in left:
            _fail(job, NotReady("the server shut down before this request ran"))


class _GrowLater(Exception):
    """A full stack cannot grow while a load into the bank is pending: park and retry."""


def _describe(batch: Sequence[_Slice]) -> str:
    """A batch for the watchdog and its log line: rows, tokens, adapters, request ids."""
    rows = sum(p.rows for p in batch)
    tokens = sum(p.rows * p.job.tokens_per_row for p in batch)
    adapters = sorted({str(p.job.adapter_id) for p in batch})
    requests = list(dict.fromkeys(p.job.request_id for p in batch))
    more = f" (+{len(requests) - _SHOWN_IDS} more)" if len(requests) > _SHOWN_IDS else ""
    return (
        f"{rows} rows, {tokens} tokens; adapters {', '.join(adapters)}; requests "
        f"{', '.join(requests[:_SHOWN_IDS])}{more}"
    )


def _deliver(part: _Slice, out: Tensor) -> None:
    """Hand a slice's logits to its job; the job's future resolves after its last rows."""
    job = part.job
    if job.future.done():  # failed meanwhile (watchdog, another chunk): nothing to answer
        return
    job.parts.append(out)
    if part.stop < job.rows:
        return
    result = job.parts[0] if len(job.parts) == 1 else torch.cat(job.parts)
    job.parts = []
    with contextlib.suppress(InvalidStateError):
        job.future.set_result(result)


def _fail(job: Job, exc: BaseException) -> None:
    """Fail a job's future unless it is already settled or its client cancelled it (any thread:
    the worker and the watchdog may race; the first outcome wins)."""
    fut = job.future
    if fut.done() or (not fut.running() and not fut.set_running_or_notify_cancel()):
        return
    with contextlib.suppress(InvalidStateError):
        fut.set_exception(exc)


def _chain(step: Future[Any], fail: Callable[[BaseException], None]) -> None:
    """Forward a failed step's exception to ``fail``."""

    def check(fut: Future[Any]) -> None:
        exc = fut.exception() if not fut.cancelled() else NotReady("the engine stopped")
        if exc is not None:
            fail(exc)

    step.add_done_callback(check)
