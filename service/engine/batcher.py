"""The engine's queue and batch formation (LitServe's loop, with vLLM's per-row adapter index).

Threads: **event loop** and any caller of ``Engine.submit*`` run :meth:`Batcher.put`; the
**engine worker** (``lookaside-engine``) runs :meth:`Batcher.next_batch` and owns the chunk
bookkeeping of every job it takes (``Job.start``, ``Job.parts``); the **watchdog**
(``lookaside-watchdog``) empties the queue with :meth:`Batcher.take_all` when the engine stalls.
Everything here is guarded by :attr:`Batcher.cond`, the one condition the worker sleeps on
(the engine's bank commands use it too, so a command wakes the worker between batches).

Batch formation: the oldest queued job fixes the batch's token grid (frames x mel bins: rows of
one forward must share it); the batcher then takes every queued job of that grid in arrival
order, mixing adapters (``mixing=on``) or only the first job's adapter (``mixing=off``), until
``max_batch_size`` rows or ``max_wait_ms`` after the first job arrived. Jobs of other grids stay
queued for the next batch.

Per-forward budget: a forward also holds at most ``max_batch_tokens`` patch tokens (rows x the
tokens one row of that grid gives on the backbone), so no job can make one forward arbitrarily
long. A job with more rows than one forward takes runs in chunks: each batch takes the next rows
of it, and the rest goes back to the end of the queue, so its chunks interleave with other jobs
instead of holding the engine; its future resolves with every row, in order, after its last
chunk.

Task kinds: jobs batch only with jobs of the same kind and grid. Right after a batch of a kind
whose forwards are long (:attr:`~lookaside.tasks.TaskKind.yields`: AV events), the oldest job of
another kind goes first, so an AV stream never holds audio rows back for more than one forward.

A job past its deadline when the batcher reaches it (including its later chunks) is answered 504
without running.

Parked jobs (:mod:`service.engine.parked`): a job queued with a pending ``ready`` (its adapter is
loading) keeps its place and counts in the queue, but is skipped until ``ready`` succeeds: the
oldest *takeable* job fixes the batch, and jobs behind a parked one are taken as usual. Each
:meth:`Batcher.next_batch` sweeps parked jobs: past their deadline they are answered 504, with a
failed ``ready`` they fail with its error (a cancelled ``ready`` cancels the job). With only parked
jobs queued the worker sleeps until the earliest parked deadline, a put, a command, or a
``ready`` completing (its done-callback notifies :attr:`Batcher.cond`).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lookaside.backbone_config import BackboneConfig
from lookaside.tasks import Inputs, TaskKind
from service.engine import parked
from service.errors import NotReady, OverBudget, QueueFull, RequestTimeout
from service.metrics import ServiceMetrics

__all__ = ["Batcher", "Job", "Slice", "deliver", "describe", "fail"]

_SHOWN_IDS = 16
"""Most request ids a batch's description names (in the stall log line and reason)."""


def row_tokens(
    task: TaskKind, inputs: Inputs, cfg: BackboneConfig, adapter_id: str | None, limit: int
) -> int:
    """Tokens one row of these inputs needs in a forward, after checking their shapes; raises
    :class:`OverBudget` (422) past ``limit`` (``max_batch_tokens``), before anything is queued
    or sent (the engine, and a Ray ingress before it calls a replica)."""
    task.check_inputs(inputs)  # ConfigError, a ValueError: a caller's bug, not a client's
    tokens = task.tokens_per_row(cfg, inputs)
    if tokens > limit:
        raise OverBudget.for_row(adapter_id, task.grid(inputs), tokens, limit)
    return tokens


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
    ready: Future[Any] | None = None
    """While set and not succeeded, the job is parked (:mod:`service.engine.parked`); cleared
    under :attr:`Batcher.cond` once it succeeded."""

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
class Slice:
    """Rows ``[start, stop)`` of one job, as one batch takes them."""

    job: Job
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


class Batcher:
    """The bounded job queue and the rule that forms each forward's batch (module docstring).

    Args:
        max_batch_size: most rows per forward.
        max_batch_tokens: most patch tokens (rows x tokens per row) in one forward.
        max_wait_s: how long to wait for more rows after a batch's first job arrived.
        capacity: most queued jobs; beyond it :meth:`put` raises :class:`QueueFull`.
        mixing: mix adapters in one forward (True) or serve one adapter per batch (False).
        metrics: where queue depth and queue waits are recorded.
        interrupted: called with :attr:`cond` held; True makes :meth:`next_batch` return at once
            (the engine has a bank command to apply between batches).
    """

    def __init__(
        self,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_s: float,
        capacity: int,
        mixing: bool,
        metrics: ServiceMetrics,
        interrupted: Callable[[], bool],
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.capacity = capacity
        self.mixing = mixing
        self.metrics = metrics
        self.cond = threading.Condition()
        self._interrupted = interrupted
        self._queue: collections.deque[Job] = collections.deque()
        self.accepting = True  # jobs may queue before the worker starts; they run once it does
        self.stopping = False
        self.drain = True
        self._last_task: TaskKind | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, job: Job) -> None:
        """Queue a job (any thread); :class:`NotReady` once closed, :class:`QueueFull` at
        capacity. A job with a pending ``ready`` is parked (module docstring): ``ready``
        completing, or the job being answered or cancelled meanwhile, wakes the worker."""
        ready = job.ready
        if ready is not None and not parked.blocked(job):  # done before it queued: not parked
            ready = None
        with self.cond:
            if not self.accepting:
                raise NotReady("the server is shutting down; retry on another replica or later")
            if len(self._queue) >= self.capacity:
                raise QueueFull(
                    f"the queue is full ({self.capacity} jobs); retry after the "
                    "Retry-After delay, or raise LOOKASIDE_QUEUE_CAPACITY"
                )
            self._queue.append(job)
            depth = len(self._queue)
            self.cond.notify_all()
        self.metrics.safe(lambda: self.metrics.queue_depth.set(depth))
        if ready is not None:  # after the append: a callback that runs at once finds it queued
            ready.add_done_callback(lambda _: self._wake())
            job.future.add_done_callback(lambda _: self._wake() if job.ready is not None else None)

    def _wake(self) -> None:
        """Notify the worker (any thread, the worker's own included: the lock is reentrant and
        held only briefly by everyone, so this never blocks for long)."""
        with self.cond:
            self.cond.notify_all()

    def close(self, *, drain: bool) -> None:
        """Refuse new jobs; the worker answers what is queued (``drain``) or stops at once."""
        with self.cond:
            self.accepting = False
            self.stopping = True
            self.drain = drain
            self.cond.notify_all()

    def finished(self) -> bool:
        """Stopping with nothing left to run (lock held by the caller or not: a snapshot). A
        drain does not wait for parked jobs: once nothing else is left they fail with the rest
        (:meth:`fail_remaining`)."""
        with self.cond:
            return self.stopping and (not self.drain or self._first_job() is None)

    def take_all(self) -> list[Job]:
        """Empty the queue, parked jobs included, and return what it held (the watchdog on a
        stall; the worker at stop)."""
        with self.cond:
            left = list(self._queue)
            self._queue.clear()
        self.metrics.safe(lambda: self.metrics.queue_depth.set(0))
        return left

    def fail_remaining(self, exc: BaseException) -> None:
        """Fail every job still queued, parked ones included, with ``exc`` (the worker at stop)."""
        for job in self.take_all():
            fail(job, exc)

    def _first_job(self) -> Job | None:
        """The job whose batch key the next batch takes: the oldest that is not parked, except
        that right after a batch of a kind that :attr:`~lookaside.tasks.TaskKind.yields`
        (audio-visual events), the oldest job of another kind goes first, so its rows never wait
        behind more than one such forward (and those rows, behind more than one other batch).
        None when every queued job is parked (or none is). Call with the lock held."""
        takeable = (job for job in self._queue if not parked.blocked(job))
        oldest = next(takeable, None)
        last = self._last_task
        if oldest is not None and last is not None and last.yields and oldest.task is last:
            for job in takeable:
                if job.task is not last:
                    return job
        return oldest

    def _matches(self, job: Job, first: Job) -> bool:
        if job.batch_key != first.batch_key or parked.blocked(job):
            return False
        return self.mixing or job.adapter_id == first.adapter_id

    def _row_cap(self, first: Job) -> int:
        """Most rows of ``first``'s grid one forward may hold: ``max_batch_size`` and the token
        budget (every job of one grid has the same tokens per row)."""
        return max(1, min(self.max_batch_size, self.max_batch_tokens // first.tokens_per_row))

    def next_batch(self) -> list[Slice] | None:
        """Wait for work (worker thread); return the next batch ([] if every taken job was
        stale), or None when there is a command to apply, the engine is stopping with nothing
        left to run, or no job may run yet: only parked jobs are queued (after a sleep bounded
        by the earliest parked deadline) or some were just answered (the caller loops)."""
        batch: list[Slice] | None = None
        waits: list[float] = []
        with self.cond:
            while not self._queue and not self._interrupted() and not self.stopping:
                self.cond.wait()
            if self._interrupted():
                return None
            self._queue, expired, failed = parked.sweep(self._queue, time.monotonic())
            first = self._first_job()
            if first is None and self._queue and not self.stopping and not expired and not failed:
                # only parked jobs: sleep until one's deadline or a wake (put, command, ready)
                self.cond.wait(parked.wait_s(self._queue, time.monotonic()))
            elif first is not None and not (self.stopping and not self.drain):
                batch, taken_expired, waits = self._fill(first)
                expired += taken_expired
            depth = len(self._queue)
        self.metrics.safe(lambda: self.metrics.queue_depth.set(depth))
        for wait in waits:
            self.metrics.safe(lambda w=wait: self.metrics.queue_wait.observe(w))  # type: ignore[misc]
        for job in expired:
            ran = f" after {job.start} of its {job.rows} rows ran" if job.start else ""
            fail(
                job,
                RequestTimeout(
                    f"the request waited past its timeout in the queue{ran}; retry later"
                ),
            )
        for job, exc in failed:  # the adapter's load failed: its error, unchanged
            if isinstance(exc, CancelledError):
                job.future.cancel()
            else:
                fail(job, exc)
        return batch

    def _fill(self, first: Job) -> tuple[list[Slice], list[Job], list[float]]:
        """Wait (lock held) until ``first``'s grid has a forward's rows or ``max_wait_ms`` after
        it arrived, then take them (:meth:`_take`)."""
        cap = self._row_cap(first)
        self._last_task = first.task
        flush_at = first.enqueued + self.max_wait_s
        while not self.stopping and not self._interrupted():
            rows = sum(j.remaining for j in self._queue if self._matches(j, first))
            remaining = flush_at - time.monotonic()
            if rows >= cap or remaining <= 0:
                break
            self.cond.wait(remaining)
        return self._take(first, cap)

    def _take(self, first: Job, cap: int) -> tuple[list[Slice], list[Job], list[float]]:
        """Rows of the next forward (lock held): jobs of ``first``'s grid in queue order, each
        whole if it fits, up to ``cap`` rows; a job larger than one forward gives its next rows
        and goes back to the end of the queue with the rest. Returns (batch, jobs past their
        deadline, queue waits of jobs taken for the first time)."""
        now = time.monotonic()
        batch: list[Slice] = []
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
            batch.append(Slice(job, job.start, job.start + n))
            job.start += n
            rows += n
            if job.remaining:
                again.append(job)
        kept.extend(again)
        self._queue = kept
        return batch, expired, waits


def describe(batch: Sequence[Slice]) -> str:
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


def deliver(part: Slice, out: Tensor) -> None:
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


def fail(job: Job, exc: BaseException) -> None:
    """Fail a job's future unless it is already settled or its client cancelled it (any thread:
    the worker and the watchdog may race; the first outcome wins)."""
    fut = job.future
    if fut.done() or (not fut.running() and not fut.set_running_or_notify_cancel()):
        return
    with contextlib.suppress(InvalidStateError):
        fut.set_exception(exc)
