"""The batcher's queue (service.engine.batcher): capacity, closing, emptying. Batch formation
itself is tested through the engine (test_engine.py, test_engine_budget.py)."""

from __future__ import annotations

import pytest
import torch

from lookaside.tasks import CLIP
from service.engine.batcher import Batcher, Job, fail
from service.errors import NotReady, QueueFull
from service.metrics import ServiceMetrics


def batcher(capacity: int = 2) -> Batcher:
    return Batcher(
        max_batch_size=4,
        max_batch_tokens=1024,
        max_wait_s=0.0,
        capacity=capacity,
        mixing=True,
        metrics=ServiceMetrics(),
        interrupted=lambda: False,
    )


def job(rows: int = 1) -> Job:
    return Job(CLIP, (torch.zeros(rows, 128, 128),), "a@1", "r", deadline=float("inf"))


def test_capacity_close_and_take_all() -> None:
    b = batcher()
    jobs = [job(), job()]
    for j in jobs:
        b.put(j)
    with pytest.raises(QueueFull, match="LOOKASIDE_QUEUE_CAPACITY"):
        b.put(job())
    assert len(b) == 2
    b.close(drain=True)
    assert not b.finished()  # draining: what is queued is still answered
    with pytest.raises(NotReady, match="shutting down"):
        b.put(job())
    assert b.take_all() == jobs
    assert b.finished()


def test_next_batch_takes_whole_jobs_up_to_the_row_cap() -> None:
    b = batcher(capacity=8)
    first, second, third = job(2), job(2), job(1)
    for j in (first, second, third):
        b.put(j)
    batch = b.next_batch()
    assert batch is not None
    assert [(p.job, p.rows) for p in batch] == [(first, 2), (second, 2)]
    assert len(b) == 1  # the third waits for the next batch
    fail(third, NotReady("gone"))
    assert b.next_batch() is None  # nothing left to run
