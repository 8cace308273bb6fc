"""Parked jobs (service.engine.parked): rows queued while their adapter loads are never taken
before their ``ready`` succeeds, never hold back other adapters' rows, go into the first batch
formed after ``ready`` succeeds, and fail with ``ready``'s error, at their deadline, on cancel
and at stop. Checked by ordering and counting (batches recorded at the model's forward)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError, Future
from typing import Any

import pytest
import torch
from torch import Tensor

from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.model import MultiAdapterModel
from lookaside.tasks import CLIP
from service.engine import Engine
from service.engine import parked as parked_module
from service.engine.batcher import Batcher, Job
from service.errors import AdapterUnavailable, NotReady, QueueFull, RequestTimeout
from service.metrics import ServiceMetrics
from tests.integration.service.svc_support import make_checkpoint, tiny


@pytest.fixture(scope="module")
def backbone() -> VisionTransformer:
    return tiny()


@pytest.fixture(scope="module")
def hot(backbone: VisionTransformer) -> AdapterCheckpoint:
    return make_checkpoint(backbone, "hot", method="lora", seed=3)


@pytest.fixture(scope="module")
def cold(backbone: VisionTransformer) -> AdapterCheckpoint:
    return make_checkpoint(backbone, "cold", method="lora", seed=4)


class Recorder:
    """Records the adapter ids of every forward; optionally holds the first one until released."""

    def __init__(self, engine: Engine, *, hold_first: bool = False) -> None:
        self.batches: list[list[str | None]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        real = engine.model.forward

        def forward(spec: Tensor, ids: Sequence[str | None]) -> list[Tensor | None]:
            self.batches.append(list(ids))
            self.entered.set()
            assert self.release.wait(30)
            return real(spec, ids)

        engine.model.forward = forward  # type: ignore[method-assign,assignment]


@pytest.fixture
def engine(backbone: VisionTransformer, hot: AdapterCheckpoint) -> Iterator[Engine]:
    eng = Engine(backbone, device=torch.device("cpu"), max_batch_size=32, max_wait_ms=1)
    eng.load_adapter(hot).result(timeout=30)
    yield eng
    eng.stop(drain=False)


class Sleeps:
    """Counts the worker's sleeps with only parked jobs queued: from its call of
    :func:`service.engine.parked.wait_s` until its wait releases the lock, the worker holds the
    lock, so once a count is reached whatever the test does next needs a wake."""

    def __init__(self) -> None:
        self.count = 0
        self.cond = threading.Condition()

    def past(self, n: int) -> bool:
        """Wait (bounded) until the worker went to sleep more than ``n`` times."""
        with self.cond:
            return self.cond.wait_for(lambda: self.count > n, timeout=30)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Sleeps:
    counter = Sleeps()
    real = parked_module.wait_s

    def wait_s(queue: Any, now: float) -> float | None:
        with counter.cond:
            counter.count += 1
            counter.cond.notify_all()
        return real(queue, now)

    monkeypatch.setattr(parked_module, "wait_s", wait_s)
    return counter


def _feats(seed: int) -> Tensor:
    return torch.randn(1, 128, 128, generator=torch.Generator().manual_seed(seed))


def _submit(engine: Engine, feats: Tensor, aid: str, **kw: Any) -> Future[Tensor]:
    return engine.submit_task(CLIP, (feats,), aid, **kw)


def _reference(backbone: VisionTransformer, ckpt: AdapterCheckpoint, row: Tensor) -> Tensor:
    """The adapter alone on one row, in a bank of its own (no engine code)."""
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    ckpt.load_into(bank, "ref")
    with torch.inference_mode():
        (logits,) = MultiAdapterModel(backbone, bank).eval()(row[None], ["ref"])
    assert isinstance(logits, Tensor)
    return logits


def _until(predicate: Any, what: str) -> None:
    """Poll a condition the worker makes true (bounded: a hang fails, never a timing check)."""
    for _ in range(400):
        if predicate():
            return
        time.sleep(0.025)
    raise AssertionError(f"never happened: {what}")


def test_a_parked_job_holds_back_no_one_and_runs_once_its_adapter_is_ready(
    engine: Engine,
    backbone: VisionTransformer,
    hot: AdapterCheckpoint,
    cold: AdapterCheckpoint,
    sleeps: Sleeps,
) -> None:
    rec = Recorder(engine)
    ready: Future[None] = Future()
    engine.start()
    parked = _submit(engine, _feats(0), cold.manifest.id, timeout_s=3600, ready=ready)
    others = [_submit(engine, _feats(i), hot.manifest.id) for i in range(1, 6)]
    for fut in others:
        assert fut.result(timeout=60).shape == (1, len(hot.manifest.labels))
    assert not parked.done()
    assert engine.queue_depth == 1  # parked jobs count in the queue
    assert all(cold.manifest.id not in ids for ids in rec.batches)
    loaded = engine.load_adapter(cold)
    at_load: list[int] = []
    loaded.add_done_callback(lambda _: at_load.append(sleeps.count))  # on the worker
    loaded.result(timeout=30)
    assert sleeps.past(at_load[0])  # asleep since the load: only ready's callback can wake it
    ready.set_result(None)
    out = parked.result(timeout=60)
    torch.testing.assert_close(
        out[0], _reference(backbone, cold, _feats(0)[0]), atol=2e-5, rtol=1e-4
    )
    assert engine.queue_depth == 0


def test_the_parked_job_is_in_the_first_batch_after_the_boundary_that_publishes_it(
    engine: Engine, hot: AdapterCheckpoint, cold: AdapterCheckpoint
) -> None:
    rec = Recorder(engine, hold_first=True)
    ready: Future[None] = Future()
    engine.start()
    parked = _submit(engine, _feats(0), cold.manifest.id, ready=ready)
    first = _submit(engine, _feats(1), hot.manifest.id)
    assert rec.entered.wait(30)  # the worker is in the forward of `first` alone
    behind = [_submit(engine, _feats(i), hot.manifest.id) for i in range(2, 6)]
    # the registry's way: the load's future completes `ready` inside the install command
    engine.load_adapter(cold).add_done_callback(lambda f: ready.set_result(None))
    rec.release.set()
    assert parked.result(timeout=60).shape[0] == 1
    assert all(f.result(timeout=60).shape[0] == 1 for f in [first, *behind])
    hot_id, cold_id = hot.manifest.id, cold.manifest.id
    assert rec.batches == [[hot_id], [cold_id] + [hot_id] * 4]


@pytest.mark.parametrize("how", ["error", "cancel"])
def test_a_failed_ready_fails_the_job_with_its_error(
    engine: Engine,
    hot: AdapterCheckpoint,
    cold: AdapterCheckpoint,
    sleeps: Sleeps,
    how: str,
) -> None:
    rec = Recorder(engine)
    ready: Future[None] = Future()
    engine.start()
    parked = _submit(engine, _feats(0), cold.manifest.id, timeout_s=3600, ready=ready)
    assert sleeps.past(0)  # only ready's done-callback can wake the worker now
    error = AdapterUnavailable("adapter cold@1 could not be loaded: simulated")
    if how == "error":
        ready.set_exception(error)
        with pytest.raises(AdapterUnavailable) as raised:
            parked.result(timeout=30)
        assert raised.value is error  # the same object: its HTTP mapping holds
    else:
        assert ready.cancel()
        with pytest.raises(CancelledError):
            parked.result(timeout=30)
        assert parked.cancelled()
    assert _submit(engine, _feats(1), hot.manifest.id).result(timeout=60).shape[0] == 1
    _until(lambda: engine.queue_depth == 0, "the failed job leaves the queue")
    assert all(cold.manifest.id not in ids for ids in rec.batches)


def test_a_parked_job_past_its_deadline_times_out_while_others_flow(
    engine: Engine, hot: AdapterCheckpoint, cold: AdapterCheckpoint
) -> None:
    engine.start()
    # alone in the queue: only the worker's timed wake at its deadline can answer it
    alone = _submit(engine, _feats(0), cold.manifest.id, timeout_s=0.2, ready=Future())
    with pytest.raises(RequestTimeout, match="waited past its timeout in the queue; retry later"):
        alone.result(timeout=30)
    late = _submit(engine, _feats(1), cold.manifest.id, timeout_s=0.0, ready=Future())
    others = [_submit(engine, _feats(i), hot.manifest.id) for i in range(2, 5)]
    assert all(f.result(timeout=60).shape[0] == 1 for f in others)
    with pytest.raises(RequestTimeout, match="waited past its timeout in the queue"):
        late.result(timeout=30)
    _until(lambda: engine.queue_depth == 0, "the expired jobs leave the queue")


def test_only_parked_jobs_queued_the_worker_sleeps_instead_of_spinning(
    engine: Engine, cold: AdapterCheckpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = engine.batcher.next_batch

    def counted() -> Any:
        nonlocal calls
        calls += 1
        return real()

    monkeypatch.setattr(engine.batcher, "next_batch", counted)
    engine.start()
    _submit(engine, _feats(0), cold.manifest.id, timeout_s=3600, ready=Future())
    _until(lambda: calls >= 1, "the worker looks at the queue")
    time.sleep(0.3)  # a spinning worker would loop thousands of times meanwhile
    assert calls <= 3


def test_a_cancelled_parked_job_is_dropped(
    engine: Engine, cold: AdapterCheckpoint, sleeps: Sleeps
) -> None:
    ready: Future[None] = Future()
    engine.start()
    parked = _submit(engine, _feats(0), cold.manifest.id, timeout_s=3600, ready=ready)
    assert engine.queue_depth == 1
    assert sleeps.past(0)  # only a wake can make the worker look at the queue again
    assert parked.cancel()  # the request was abandoned
    _until(lambda: engine.queue_depth == 0, "the cancelled job leaves the queue")
    ready.set_result(None)  # a late ready finds nothing to run
    assert engine.queue_depth == 0
    assert engine.batches_run == 0


def test_a_drain_at_stop_fails_a_parked_job_whose_ready_never_completes(
    engine: Engine, hot: AdapterCheckpoint, cold: AdapterCheckpoint
) -> None:
    engine.start()
    parked = _submit(engine, _feats(0), cold.manifest.id, timeout_s=3600, ready=Future())
    queued = _submit(engine, _feats(1), hot.manifest.id)
    stopper = threading.Thread(target=engine.stop, kwargs={"drain": True, "timeout": 60})
    stopper.start()
    stopper.join(90)
    assert not stopper.is_alive()
    assert not engine.alive
    assert queued.result(timeout=0).shape[0] == 1  # drained
    with pytest.raises(NotReady, match="shut down before this request ran"):
        parked.result(timeout=0)


def test_ready_completed_on_the_worker_inside_a_bank_command_does_not_deadlock(
    engine: Engine, hot: AdapterCheckpoint
) -> None:
    ready: Future[None] = Future()
    engine.start()
    parked = _submit(engine, _feats(0), hot.manifest.id, ready=ready)
    engine.call(lambda: ready.set_result(None)).result(timeout=30)
    assert parked.result(timeout=60).shape[0] == 1


# -- the batcher alone ----------------------------------------------------------------------


def _batcher(capacity: int = 8) -> Batcher:
    return Batcher(
        max_batch_size=8,
        max_batch_tokens=8192,
        max_wait_s=0.0,
        capacity=capacity,
        mixing=True,
        metrics=ServiceMetrics(),
        interrupted=lambda: False,
    )


def _job(frames: int, ready: Future[Any] | None = None) -> Job:
    return Job(CLIP, (torch.zeros(1, frames, 128),), "a@1", "r", float("inf"), ready=ready)


def test_a_parked_job_fixes_no_grid_and_counts_against_capacity() -> None:
    b = _batcher(capacity=3)
    ready: Future[None] = Future()
    parked, a, c = _job(64, ready), _job(128), _job(128)
    for j in (parked, a, c):
        b.put(j)
    with pytest.raises(QueueFull):
        b.put(_job(128))
    batch = b.next_batch()
    assert batch is not None
    assert [p.job for p in batch] == [a, c]  # the 128 grid, not the 64
    assert len(b) == 1
    ready.set_result(None)
    batch = b.next_batch()
    assert batch is not None
    assert [p.job for p in batch] == [parked]
    assert len(b) == 0


def test_a_ready_already_done_is_not_parked() -> None:
    b = _batcher()
    done: Future[None] = Future()
    done.set_result(None)
    job = _job(128, done)
    b.put(job)
    assert job.ready is None
    batch = b.next_batch()
    assert batch is not None
    assert [p.job for p in batch] == [job]
