"""Parked jobs: queued rows whose adapter is still loading (the job's ``ready`` future).

A request for an adapter that is not published yet may queue its rows with ``ready`` (the
load's future: published, or the load's error) instead of waiting for the load first, so the
batch formed right after the boundary that publishes the adapter already holds them. Until
``ready`` succeeds such a job is *parked*: it counts in the queue like any job, but the batcher
never takes it, never lets it fix a batch's grid or task kind, and never lets it hold back the
jobs behind it (:mod:`service.engine.batcher`).

Threads: ``ready`` completes on any thread, the engine worker included (the registry completes
it inside the bank command that publishes the adapter); its done-callback only notifies the
batcher's condition (an ``RLock``, which the worker never holds while applying commands or
running a forward), so it never blocks. Answering a parked job (its load failed, its deadline
passed) is the worker's, at its next sweep. The functions below run with the batcher's lock
held unless they say otherwise.
"""

from __future__ import annotations

import collections
import math
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.engine.batcher import Job

__all__ = ["blocked", "failure", "sweep", "wait_s"]


def failure(ready: Future[Any]) -> BaseException | None:
    """The error a settled ``ready`` ended with (a :class:`CancelledError` if it was cancelled);
    None while it is pending or once it succeeded (any thread)."""
    if not ready.done():
        return None
    if ready.cancelled():
        return CancelledError()
    return ready.exception()


def blocked(job: Job) -> bool:
    """The job may not run yet: its ``ready`` is pending, or failed (then the next sweep answers
    it). Once ``ready`` succeeded this clears ``job.ready``, so the job is an ordinary queued one
    from then on and later checks cost nothing."""
    ready = job.ready
    if ready is None:
        return False
    if ready.done() and failure(ready) is None:
        job.ready = None
        return False
    return True


def sweep(
    queue: collections.deque[Job], now: float
) -> tuple[collections.deque[Job], list[Job], list[tuple[Job, BaseException]]]:
    """Drop settled jobs (answered, or cancelled by their client) and take out the parked jobs
    to answer now. Returns (the jobs left, in queue order; parked jobs past their deadline;
    parked jobs whose ``ready`` failed, with its error). A job that is not parked keeps today's
    rule: its deadline is checked when a batch reaches it."""
    kept: collections.deque[Job] = collections.deque()
    expired: list[Job] = []
    failed: list[tuple[Job, BaseException]] = []
    for job in queue:
        if job.future.done():
            continue
        ready = job.ready
        if ready is not None and blocked(job):
            exc = failure(ready)
            if exc is not None:
                failed.append((job, exc))
                continue
            if now > job.deadline:
                expired.append(job)
                continue
        kept.append(job)
    return kept, expired, failed


def wait_s(queue: collections.deque[Job], now: float) -> float | None:
    """How long the worker may sleep when only parked jobs are queued: until the earliest
    parked deadline (just past it, so the next sweep finds it expired); None if none has one."""
    deadlines = [job.deadline for job in queue if job.ready is not None]
    earliest = min(deadlines, default=math.inf)
    if math.isinf(earliest):
        return None
    return max(earliest - now, 0.0) + 0.001
