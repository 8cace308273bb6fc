"""Engine: mixed batches equal each row run alone, grid grouping, mixing=off, failure isolation,
queue limits, deadlines, draining, and bank changes between batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import pytest
import torch
from torch import Tensor

from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import AdapterCheckpoint
from service.engine import Engine, loads
from service.errors import EngineFailure, NotReady, QueueFull, RequestTimeout
from tests.integration.service.svc_support import SHORT_FEATURES, make_checkpoint, tiny
from tests.support import alone_logits

METHODS = ["bottleneck", "lora", "loaa", "linear", "soft_moa", "prompt"]


@pytest.fixture(scope="module")
def backbone() -> VisionTransformer:
    return tiny()


@pytest.fixture(scope="module")
def checkpoints(backbone: VisionTransformer) -> dict[str, AdapterCheckpoint]:
    return {
        m: make_checkpoint(backbone, m.replace("_", "-"), method=m, seed=i)
        for i, m in enumerate(METHODS)
    }


def _engine(backbone: VisionTransformer, **kw: object) -> Engine:
    opts: dict[str, object] = {
        "device": torch.device("cpu"),
        "max_batch_size": 32,
        "max_wait_ms": 1,
    }
    opts.update(kw)
    return Engine(backbone, **opts)  # type: ignore[arg-type]


@pytest.fixture
def engine(
    backbone: VisionTransformer, checkpoints: dict[str, AdapterCheckpoint]
) -> Iterator[Engine]:
    eng = _engine(backbone, max_wait_ms=200)
    for ckpt in checkpoints.values():
        eng.load_adapter(ckpt).result(timeout=30)
    yield eng
    eng.stop(drain=False)


def _feats(rows: int, frames: int = 128, seed: int = 0) -> Tensor:
    return torch.randn(rows, frames, 128, generator=torch.Generator().manual_seed(seed))


def _results(futures: Sequence[Future[Tensor]]) -> list[Tensor]:
    return [f.result(timeout=60) for f in futures]


def test_mixed_batch_rows_equal_each_adapter_alone(
    engine: Engine, backbone: VisionTransformer, checkpoints: dict[str, AdapterCheckpoint]
) -> None:
    # Skewed: one row of the first adapter, several of others; queued before the worker starts
    # so they form one batch.
    jobs = [(m, _feats(1 if i == 0 else 1 + i % 3, seed=i)) for i, m in enumerate(METHODS)]
    futures = [engine.submit(f, checkpoints[m].manifest.id) for m, f in jobs]
    engine.start()
    outs = _results(futures)
    assert engine.batches_run == 1
    for (m, feats), out in zip(jobs, outs, strict=True):
        assert out.shape == (feats.shape[0], len(checkpoints[m].manifest.labels))
        for r in range(feats.shape[0]):
            ref = alone_logits(backbone, checkpoints[m], feats[r])
            torch.testing.assert_close(out[r], ref, atol=2e-5, rtol=1e-4)
    # adapters really differ, so a routing mix-up would show
    assert not torch.allclose(outs[1][0], outs[2][0][: outs[1].shape[1]])


def test_rows_are_grouped_by_token_grid(
    backbone: VisionTransformer, checkpoints: dict[str, AdapterCheckpoint]
) -> None:
    short = make_checkpoint(backbone, "short", method="lora", features=SHORT_FEATURES, seed=9)
    eng = _engine(backbone, max_wait_ms=200)
    try:
        eng.load_adapter(checkpoints["lora"]).result(timeout=30)
        eng.load_adapter(short).result(timeout=30)
        a = eng.submit(_feats(2, 128, 1), checkpoints["lora"].manifest.id)
        b = eng.submit(_feats(3, 64, 2), short.manifest.id)
        c = eng.submit(_feats(1, 128, 3), checkpoints["lora"].manifest.id)
        eng.start()
        outs = _results([a, b, c])
        assert eng.batches_run == 2  # {a, c} on the 128-frame grid, {b} on the 64-frame grid
        assert [o.shape[0] for o in outs] == [2, 3, 1]
        ref = alone_logits(backbone, short, _feats(3, 64, 2)[2])
        torch.testing.assert_close(outs[1][2], ref, atol=2e-5, rtol=1e-4)
    finally:
        eng.stop(drain=False)


def test_mixing_off_serves_one_adapter_per_batch(
    backbone: VisionTransformer, checkpoints: dict[str, AdapterCheckpoint]
) -> None:
    eng = _engine(backbone, max_wait_ms=200, mixing=False)
    try:
        for m in ("lora", "bottleneck"):
            eng.load_adapter(checkpoints[m]).result(timeout=30)
        ids = [checkpoints[m].manifest.id for m in ("lora", "bottleneck", "lora")]
        futures = [eng.submit(_feats(1, seed=i), aid) for i, aid in enumerate(ids)]
        eng.start()
        _results(futures)
        assert eng.batches_run == 2  # both lora jobs together, bottleneck alone
    finally:
        eng.stop(drain=False)


def test_batch_size_cap_and_oversized_job_in_chunks(
    backbone: VisionTransformer, checkpoints: dict[str, AdapterCheckpoint]
) -> None:
    eng = _engine(backbone, max_batch_size=4, max_wait_ms=200)
    try:
        aid = checkpoints["bottleneck"].manifest.id
        eng.load_adapter(checkpoints["bottleneck"]).result(timeout=30)
        big = _feats(10, seed=5)
        futures = [eng.submit(big, aid), eng.submit(_feats(3, seed=6), aid)]
        eng.start()
        out_big, out_small = _results(futures)
        assert out_big.shape[0] == 10
        assert out_small.shape[0] == 3
        ref = alone_logits(backbone, checkpoints["bottleneck"], big[9])
        torch.testing.assert_close(out_big[9], ref, atol=2e-5, rtol=1e-4)
        # 4 rows of the big job; the 3-row job with 1 more big row; 4 big rows; the last big row
        assert eng.batches_run == 4
    finally:
        eng.stop(drain=False)


def test_a_failing_forward_fails_only_its_culprit(
    engine: Engine, checkpoints: dict[str, AdapterCheckpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    poisoned = checkpoints["loaa"].manifest.id
    real = engine.model.forward

    def forward(spec: Tensor, ids: Sequence[str | None]) -> list[Tensor | None]:
        if poisoned in ids:
            raise RuntimeError("simulated kernel failure")
        return real(spec, ids)

    monkeypatch.setattr(engine.model, "forward", forward)
    ids = [checkpoints[m].manifest.id for m in ("lora", "loaa", "bottleneck")]
    futures = [engine.submit(_feats(1, seed=i), aid) for i, aid in enumerate(ids)]
    engine.start()
    good_a, bad, good_b = futures
    assert good_a.result(timeout=60).shape[0] == 1
    assert good_b.result(timeout=60).shape[0] == 1
    with pytest.raises(EngineFailure, match="model failed on this request .*RuntimeError"):
        bad.result(timeout=60)
    assert engine.metrics.batch_failures._value.get() == 1
    # the engine keeps serving
    assert engine.submit(_feats(1), ids[0]).result(timeout=60).shape[0] == 1


def test_queue_capacity_and_stop_refuse_new_work(backbone: VisionTransformer) -> None:
    eng = _engine(backbone, queue_capacity=2)
    eng.submit(_feats(1), None)
    eng.submit(_feats(1), None)
    with pytest.raises(QueueFull, match="LOOKASIDE_QUEUE_CAPACITY"):
        eng.submit(_feats(1), None)
    eng.start()
    eng.stop(drain=True)
    with pytest.raises(NotReady, match="shutting down"):
        eng.submit(_feats(1), None)


def test_stop_drains_what_was_accepted(
    engine: Engine, checkpoints: dict[str, AdapterCheckpoint]
) -> None:
    aid = checkpoints["lora"].manifest.id
    futures = [engine.submit(_feats(1, seed=i), aid) for i in range(12)]
    engine.start()
    engine.stop(drain=True)
    assert all(f.done() and f.exception() is None for f in futures)


def test_past_deadline_is_answered_504_without_running(
    engine: Engine, checkpoints: dict[str, AdapterCheckpoint]
) -> None:
    late = engine.submit(_feats(1), checkpoints["lora"].manifest.id, timeout_s=0.0)
    cancelled = engine.submit(_feats(1), checkpoints["lora"].manifest.id)
    assert cancelled.cancel()
    engine.start()
    with pytest.raises(RequestTimeout):
        late.result(timeout=60)
    assert engine.batches_run == 0


def test_loads_grow_a_full_stack_and_unloads_free_it(
    backbone: VisionTransformer, checkpoints: dict[str, AdapterCheckpoint]
) -> None:
    eng = _engine(backbone, bank_capacity=1)
    eng.start()
    try:
        a = make_checkpoint(backbone, "a", method="lora", seed=21)
        b = make_checkpoint(backbone, "b", method="lora", seed=22)
        eng.load_adapter(a).result(timeout=30)
        eng.load_adapter(b).result(timeout=30)  # same stack, capacity 1: grown between batches
        assert sorted(eng.resident()) == ["a@1", "b@1"]
        out = eng.submit(_feats(1, seed=3), "b@1").result(timeout=60)
        torch.testing.assert_close(
            out[0], alone_logits(backbone, b, _feats(1, seed=3)[0]), atol=2e-5, rtol=1e-4
        )
        eng.unload_adapter("a@1").result(timeout=30)
        assert eng.resident() == ["b@1"]
        with pytest.raises(ValueError, match="already loaded"):
            eng.load_adapter(b).result(timeout=30)
    finally:
        eng.stop()


@pytest.mark.parametrize("inline", [True, False], ids=["one-command", "three-step"])
def test_concurrent_loads_into_a_full_stack_wait_for_the_pending_one(
    backbone: VisionTransformer, monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    """A stack cannot grow while a load into it is pending; the second load must wait for that
    load's publish and then grow, not fail (it did: 'a load into the lora stack is pending')."""
    monkeypatch.setattr(loads, "copies_inline", lambda device, nbytes: inline)
    eng = _engine(backbone, bank_capacity=1)
    copy = eng.bank.load
    copying = threading.Event()

    def slow_copy(*args: Any, **kw: Any) -> None:
        copying.set()
        time.sleep(0.3)  # the first copy is still running when the others reserve
        copy(*args, **kw)

    monkeypatch.setattr(eng.bank, "load", slow_copy)
    eng.start()
    try:
        ckpts = [
            make_checkpoint(backbone, n, method="lora", seed=30 + i) for i, n in enumerate("abc")
        ]
        first = eng.load_adapter(ckpts[0])
        assert copying.wait(10)
        others = [eng.load_adapter(c) for c in ckpts[1:]]
        for fut in (first, *others):
            fut.result(timeout=30)
        assert sorted(eng.resident()) == ["a@1", "b@1", "c@1"]
        for i, ckpt in enumerate(ckpts):
            out = eng.submit(_feats(1, seed=40 + i), ckpt.manifest.id).result(timeout=60)
            torch.testing.assert_close(
                out[0],
                alone_logits(backbone, ckpt, _feats(1, seed=40 + i)[0]),
                atol=2e-5,
                rtol=1e-4,
            )
    finally:
        eng.stop()


def test_a_load_parked_behind_a_pending_one_fails_at_stop_instead_of_hanging(
    backbone: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the three-step path (large adapters on CUDA): the copy runs on the engine's loader thread
    monkeypatch.setattr(loads, "copies_inline", lambda device, nbytes: False)
    eng = _engine(backbone, bank_capacity=1)
    copy = eng.bank.load
    copying = threading.Event()
    release = threading.Event()

    def held_copy(*args: Any, **kw: Any) -> None:
        copying.set()
        release.wait(30)
        copy(*args, **kw)

    monkeypatch.setattr(eng.bank, "load", held_copy)
    eng.start()
    first = eng.load_adapter(make_checkpoint(backbone, "a", method="lora", seed=50))
    assert copying.wait(10)
    parked = eng.load_adapter(make_checkpoint(backbone, "b", method="lora", seed=51))
    stopper = threading.Thread(target=eng.stop)
    stopper.start()
    for _ in range(200):  # the worker stops at once; stop() then waits for the held copy
        if not eng.alive:
            break
        time.sleep(0.05)
    assert not eng.alive
    release.set()
    stopper.join(30)
    assert not stopper.is_alive()
    with pytest.raises(NotReady):
        parked.result(timeout=10)
    with pytest.raises(NotReady):  # its publish came after the worker stopped
        first.result(timeout=10)
