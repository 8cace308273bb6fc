"""The engine: the worker thread that owns the model and the commands it applies between batches.

Threads and what they own (nothing else touches these objects):

- **event loop** (uvicorn): HTTP, settings, the registry's bookkeeping; it only calls
  :meth:`Engine.submit` (and ``submit_av`` / ``submit_task``), :meth:`Engine.load_adapter`,
  :meth:`Engine.unload_adapter`, which enqueue and return futures, and :meth:`Engine.health`.
- **featurize pool** (:mod:`service.featurize`): decoding and features, before anything is queued,
  so a bad upload fails alone and never reaches a batch.
- **registry loader threads** (``adapter-load``, :mod:`service.registry.loader`): read and validate
  a checkpoint, then call :meth:`Engine.load_adapter` and wait on its future, bounded.
- **engine worker** (this module, one thread named ``lookaside-engine``): the backbone, the
  :class:`~lookaside.bank.AdapterBank` and the :class:`~lookaside.model.MultiAdapterModel`.
  It alternates between applying pending bank commands (:meth:`Engine.call`: a whole load, or
  reserve / publish / abort / unload / grow) and running one batch that
  :mod:`service.engine.batcher` formed, so a slot is never written while a batch reads it and a
  stack never grows under a batch.
- **engine loader** (``lookaside-loader``, one thread, :mod:`service.engine.loads`): only loads
  of large adapters on CUDA: reserve (worker) -> copy into the slot while batches keep running ->
  publish (worker). Every other load is one worker command (:mod:`service.engine.loads`).
- **watchdog** (:mod:`service.engine.watchdog`, a daemon thread named ``lookaside-watchdog``): owns
  nothing of the model; it watches every forward, bank command and adapter copy, and when one
  runs longer than ``stall_s`` it logs the batch (adapters, request ids, rows) at ERROR, sets the
  ``lookaside_engine_stalled`` gauge and fails every queued job with 503 (they would only time
  out behind it). Until that work ends, :meth:`Engine.submit` refuses with 503 and
  :meth:`Engine.health` reports the stall (``/readyz`` 503; ``/healthz`` 503 after ``dead_s``, so
  an orchestrator restarts the process). When the work ends the engine is ready again (logged).

Batching (queue, batch formation, token budget, chunks, task kinds taking turns, deadlines) is
:mod:`service.engine.batcher`, with jobs parked while their adapter loads
(:mod:`service.engine.parked`); one batch's forward is :mod:`service.engine.forward`. A job whose
single row is over ``max_batch_tokens`` is refused at submit (:class:`OverBudget`, 422); upload
validation refuses such adapters before (``CheckpointLimits.max_window_tokens``). If a forward
raises, every job of that batch is retried alone, so only the culprit fails
(:class:`~service.errors.EngineFailure`, logged with its trace); the engine keeps serving.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor

from lookaside.bank import AdapterBank
from lookaside.errors import ConfigError
from lookaside.model import FeatureRunner, MultiAdapterModel
from lookaside.tasks import AV_EVENTS, CLIP, Inputs, TaskKind
from service.engine.batcher import Batcher, Job, Slice, deliver, describe, fail, row_tokens
from service.engine.device_tier import DeviceTier, DeviceTierStats
from service.engine.forward import forward_batch
from service.engine.loads import EngineLoads, Loadable
from service.engine.watchdog import Activity, EngineHealth, Watchdog
from service.errors import EngineFailure, NotReady, OverBudget
from service.metrics import ServiceMetrics

if TYPE_CHECKING:
    from lookaside.backbone import VisionTransformer

__all__ = ["Engine", "EngineHealth", "OverBudget"]

log = logging.getLogger("service.engine")
T = TypeVar("T")


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
        runner: makes the model's feature runner (``OrtFeatures``); None: eager PyTorch.
        device_budget_bytes: most bytes the bank's adapters may take (stacks at capacity and
            heads; :mod:`service.engine.device_tier`); None: no byte limit.
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
        runner: Callable[[VisionTransformer, AdapterBank], FeatureRunner] | None = None,
        device_budget_bytes: int | None = None,
    ) -> None:
        if max_batch_size < 1 or max_batch_tokens < 1:
            raise ConfigError(
                f"need max_batch_size >= 1 and max_batch_tokens >= 1, got {max_batch_size} and "
                f"{max_batch_tokens}"
            )
        self.backbone = backbone.eval()
        self.device = device
        self.compute_dtype = compute_dtype
        self.max_batch_tokens = max_batch_tokens
        self.metrics = metrics or ServiceMetrics()
        tier = self.tier = DeviceTier(device_budget_bytes, stack_slots=bank_capacity)
        self.bank = AdapterBank.for_backbone(backbone, capacity=tier.bank_capacity, device=device)
        self.model = MultiAdapterModel(backbone, self.bank).eval()
        self.model.runner = runner(backbone, self.bank) if runner is not None else None
        self._commands: collections.deque[_Command] = collections.deque()
        self.batcher = Batcher(
            max_batch_size=max_batch_size,
            max_batch_tokens=max_batch_tokens,
            max_wait_s=max_wait_ms / 1000.0,
            capacity=queue_capacity,
            mixing=mixing,
            metrics=self.metrics,
            interrupted=lambda: bool(self._commands),
        )
        self._cond = self.batcher.cond  # one condition: a command wakes the worker too
        self._closed = False
        self._thread: threading.Thread | None = None
        self._loads = EngineLoads(self)
        self.batches_run = 0
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
        self.batcher.close(drain=drain)
        if self._thread is not None:
            self._thread.join(timeout)
        self._loads.stopped.set()  # the worker applies nothing more: loads stop waiting on it
        self._loads.shutdown()
        self.watchdog.stop()
        if (close := getattr(self.model.runner, "close", None)) is not None:
            close()

    @property
    def accepting(self) -> bool:
        return self.batcher.accepting

    @property
    def alive(self) -> bool:
        """The worker thread is running (readiness reports it)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        return len(self.batcher)

    def health(self) -> EngineHealth:
        """Stalled (not ready) or dead (liveness fails), and why (the watchdog's view). Once dead,
        loads not applied yet fail (callers waiting on them give up now: never applied later)."""
        health = self.watchdog.health()
        if health.dead:
            self._loads.give_up(f"the engine is stuck ({health.reason})", "engine_stalled")
        return health

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

        Returns a future of ``[windows, segments, classes]`` logits; raises as :meth:`submit_task`.
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
        ready: Future[Any] | None = None,
    ) -> Future[Tensor]:
        """Queue one request's rows of ``task`` for one adapter.

        Returns a future of the per-row logits. Raises :class:`ValueError` for inputs of the
        wrong shape, :class:`OverBudget` (422) when one row needs more than ``max_batch_tokens``
        tokens, :class:`QueueFull` (429) when the queue is at capacity and :class:`NotReady`
        (503) when the engine is stalled or stopping. With a pending ``ready`` (the adapter's
        load) the job is parked until it succeeds; if it fails, the job fails with its error.
        """
        tokens = row_tokens(task, inputs, self.backbone.cfg, adapter_id, self.max_batch_tokens)
        job = Job(task, inputs, adapter_id, request_id, time.monotonic() + timeout_s, ready=ready)
        job.tokens_per_row = tokens
        health = self.watchdog.health()
        if health.stalled:
            raise NotReady(
                f"{health.reason}; retry after the Retry-After delay or on another replica",
                reason="engine_stalled",
            )
        self.batcher.put(job)
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

    def load_adapter(self, checkpoint: Loadable, adapter_id: str | None = None) -> Future[None]:
        """Load a checkpoint into the bank as ``adapter_id`` (default ``name@version``); the
        future completes once it is published.

        One worker command at the next batch boundary reserves a slot (a full stack grows there),
        copies the tensors and publishes; on CUDA an adapter over ``INLINE_COPY_BYTES`` copies on
        the loader thread between a reserve and a publish command (:mod:`service.engine.loads`).
        A :class:`~lookaside.checkpoint.ValidatedCheckpoint` (from ``load_checkpoint`` /
        ``validate_checkpoint_bytes``) skips the bank's finite scan; names and shapes are always
        checked. A failure at any step gives the slot back and fails the returned future only.
        """
        return self._loads.submit(checkpoint, adapter_id or checkpoint.manifest.id)

    def unload_adapter(self, adapter_id: str) -> Future[None]:
        """Remove an adapter between batches (unroutable at once; its slot is zeroed and reused
        after the last route holding it is released)."""
        return self.call(lambda: self.bank.remove(adapter_id), what=f"unload {adapter_id}")

    def tier_stats(self) -> DeviceTierStats:
        """The bank's bytes after the worker's last command (any thread, no lock)."""
        return self.tier.stats()

    def resident(self) -> list[str]:
        """Adapter ids published in the bank."""
        return self.bank.ids()

    # -- watchdog -------------------------------------------------------------------------------
    def _stalled(self, activity: Activity, age: float) -> None:
        """The watchdog saw ``activity`` overrun ``stall_s`` (monitor thread): say which work,
        and fail the queued jobs with 503 now instead of at their own timeouts."""
        queued = self.batcher.take_all()
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
            fail(job, NotReady(reason, reason="engine_stalled"))

    def _recovered(self, activity: Activity, duration: float) -> None:
        log.warning(
            "engine recovered: %s ended after %.1f s; ready again", activity.describe(), duration
        )
        self.metrics.safe(lambda: self.metrics.engine_stalled.set(0))

    # -- worker ---------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            batch: list[Slice] | None = None
            try:
                self._apply_commands()
                batch = self.batcher.next_batch()
                if batch is None:
                    if self._finished():
                        break
                    continue
                if batch:
                    self._run_batch(batch)
            except Exception as exc:  # a bug in the loop itself: fail what it held, keep serving
                log.exception("engine loop error; failing the %d jobs it held", len(batch or []))
                for part in batch or []:
                    fail(
                        part.job,
                        EngineFailure(
                            f"internal engine error ({type(exc).__name__}); the server log "
                            f"has the trace of request {part.job.request_id}"
                        ),
                    )
        self.batcher.fail_remaining(NotReady("the server shut down before this request ran"))
        with self._cond:
            self._closed = True  # call() refuses from now on; what it accepted is applied below
        self._apply_commands()

    def _finished(self) -> bool:
        with self._cond:
            return not self._commands and self.batcher.finished()

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
                    result = self.tier.apply(self.bank, cmd.fn)  # then a new snapshot
                cmd.future.set_result(result)
            except BaseException as exc:  # handed to the caller, never kills the worker
                cmd.future.set_exception(exc)

    def _run_batch(self, batch: list[Slice]) -> None:
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
            deliver(part, out)

    def _run_alone(self, part: Slice) -> None:
        """One job's rows on their own; only that job fails if they raise."""
        job = part.job
        try:
            (out,) = self._forward([part])
        except Exception as exc:
            log.exception(
                "request %s failed in the model (adapter %s)", job.request_id, job.adapter_id
            )
            fail(
                job,
                EngineFailure(
                    f"the model failed on this request (adapter {job.adapter_id}, "
                    f"{type(exc).__name__}); the server log has the trace of request "
                    f"{job.request_id}"
                ),
            )
            return
        deliver(part, out)

    def _forward(self, batch: Sequence[Slice]) -> list[Tensor]:
        """One forward over every row of ``batch`` (watched, recorded):
        :mod:`service.engine.forward`."""
        with self.watchdog.watch("forward", describe(batch)):
            started = time.perf_counter()
            out = forward_batch(
                self.model, batch, device=self.device, compute_dtype=self.compute_dtype
            )
            self._record(batch, started, sum(p.rows for p in batch))
            return out

    def _record(self, batch: Sequence[Slice], started: float, total_rows: int) -> None:
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
