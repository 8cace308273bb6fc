"""The engine's loads (service.engine.loads): one worker command per load, all loads queued during
a forward published at the next boundary; a load given up on never takes effect (skipped,
cancelled, or taken back when it ends)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import pytest
import torch
from torch import Tensor

from lookaside.backbone import VisionTransformer
from service.engine import Engine, loads
from service.engine.loads import EngineLoads
from service.engine.watchdog import EngineHealth
from service.errors import NotReady
from tests.integration.service.svc_support import make_checkpoint, tiny

DEAD = EngineHealth(
    stalled=True, reason="a forward has run 9 s", since=0.0, stalled_for_s=9.0, dead=True
)


@pytest.fixture(scope="module")
def backbone() -> VisionTransformer:
    return tiny()


@pytest.mark.parametrize("inline", [True, False], ids=["one-command", "three-step"])
def test_a_load_behind_a_stuck_forward_gives_up_once_the_engine_is_dead(
    backbone: VisionTransformer, monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    monkeypatch.setattr(loads, "copies_inline", lambda device, nbytes: inline)
    eng = Engine(backbone, device=torch.device("cpu"), max_wait_ms=1.0, stall_s=0.2, dead_s=0.5)
    slow = make_checkpoint(backbone, "slow", seed=1)
    eng.load_adapter(slow).result(timeout=30)
    real = eng.model.forward
    entered, release = _held(eng)
    eng.start()
    try:
        job = eng.submit(torch.randn(1, 128, 128), slow.manifest.id)
        assert entered.wait(10)
        other = make_checkpoint(backbone, "other", method="lora", seed=2)
        started = time.monotonic()
        with pytest.raises(NotReady, match="other@1 did not run: .*stuck"):
            _wait_bounded(eng, eng.load_adapter(other))
        assert time.monotonic() - started < 5  # dead_s and a wait slice or two
        eng.model.forward = real  # type: ignore[method-assign]
        release.set()
        assert job.result(timeout=30).shape[0] == 1
        # the abandoned load was skipped: the same adapter loads now, into a clean stack
        eng.load_adapter(other).result(timeout=30)
        assert sorted(eng.resident()) == ["other@1", "slow@1"]
    finally:
        release.set()
        eng.stop()


def _wait_bounded(eng: Engine, future: Future[None]) -> None:
    """Wait as the registry's loader does: a slice at a time, asking the engine's health."""
    deadline = time.monotonic() + 30
    while True:
        try:
            future.result(timeout=0.1)
            return
        except TimeoutError:
            assert time.monotonic() < deadline
            eng.health()


def _held(eng: Engine) -> tuple[threading.Event, threading.Event]:
    """Hold the engine's forwards until the returned ``release`` is set (``entered``: one runs)."""
    entered, release = threading.Event(), threading.Event()
    real = eng.model.forward

    def held(spec: Tensor, ids: Sequence[str | None]) -> list[Tensor | None]:
        entered.set()
        assert release.wait(60)
        return real(spec, ids)

    eng.model.forward = held  # type: ignore[method-assign, assignment]
    return entered, release


def test_loads_queued_during_a_forward_are_all_published_at_the_next_boundary(
    backbone: VisionTransformer,
) -> None:
    eng = Engine(backbone, device=torch.device("cpu"), max_wait_ms=1.0, bank_capacity=2)
    base = make_checkpoint(backbone, "base", seed=1)
    eng.load_adapter(base).result(timeout=30)  # not started: applied on this thread
    entered, release = _held(eng)
    eng.start()
    try:
        first = eng.submit(torch.randn(1, 128, 128), base.manifest.id)
        assert entered.wait(10)
        commands = eng._loads.commands
        ckpts = [make_checkpoint(backbone, f"a{i}", seed=10 + i) for i in range(6)]
        futures = [eng.load_adapter(c) for c in ckpts]  # 6 loads: the 2-slot stack grows twice
        second = eng.submit(torch.randn(1, 128, 128), "a5@1")  # queued behind the loads
        published_after: list[int] = []
        for f in futures:  # runs on the worker as each load ends: the batches run before it
            f.add_done_callback(lambda _: published_after.append(eng.batches_run))
        time.sleep(0.2)
        assert not any(f.done() for f in futures)  # the worker is in the held forward
        release.set()
        for f in futures:
            f.result(timeout=30)
        assert published_after == [1] * 6  # all at the boundary after the held forward
        assert eng._loads.commands - commands == 6  # one worker command per load
        assert second.result(timeout=30).shape[0] == 1
        assert first.result(timeout=30).shape[0] == 1
        assert sorted(eng.resident()) == sorted(["base@1", *(c.manifest.id for c in ckpts)])
    finally:
        release.set()
        eng.stop()


def test_a_load_given_up_while_it_runs_is_taken_back(
    backbone: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stuck command is the load itself: its caller gives up once the engine is dead, and the
    worker removes what it published when the copy finally ends."""
    eng = Engine(backbone, device=torch.device("cpu"), max_wait_ms=1.0, stall_s=0.2, dead_s=0.5)
    real, copying, release = eng.bank.load, threading.Event(), threading.Event()

    def held(*args: Any, **kw: Any) -> None:
        copying.set()
        assert release.wait(60)
        real(*args, **kw)

    monkeypatch.setattr(eng.bank, "load", held)
    eng.start()
    try:
        ckpt = make_checkpoint(backbone, "x", seed=8)
        future = eng.load_adapter(ckpt)
        assert copying.wait(10)
        with pytest.raises(NotReady, match="x@1 did not run: .*stuck"):
            _wait_bounded(eng, future)
        release.set()
        eng.call(lambda: None).result(timeout=30)  # applied after the load's command ended
        assert eng.resident() == []
        assert eng.bank._reservations == {}
        monkeypatch.setattr(eng.bank, "load", real)
        eng.load_adapter(ckpt).result(timeout=30)
        assert eng.resident() == ["x@1"]
    finally:
        release.set()
        eng.stop()


def test_a_failed_copy_leaves_no_slot_reserved(
    backbone: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = Engine(backbone, device=torch.device("cpu"), max_wait_ms=1.0, bank_capacity=1)
    eng.start()
    try:
        ckpt = make_checkpoint(backbone, "x", seed=3)
        real = eng.bank.load

        def broken(*args: Any, **kw: Any) -> None:
            raise RuntimeError("copy failed")

        monkeypatch.setattr(eng.bank, "load", broken)
        with pytest.raises(RuntimeError, match="copy failed"):
            eng.load_adapter(ckpt).result(timeout=30)
        assert eng.bank._reservations == {}
        assert eng.resident() == []
        monkeypatch.setattr(eng.bank, "load", real)
        # the one slot of the stack is free again: the same id loads without growing the stack
        eng.load_adapter(ckpt).result(timeout=30)
        assert eng.resident() == ["x@1"]
        assert eng.bank.stack_capacity("bottleneck", ckpt.manifest.adapter_config()) == 1
    finally:
        eng.stop()


def test_loads_after_stop_fail_with_not_ready(backbone: VisionTransformer) -> None:
    eng = Engine(backbone, device=torch.device("cpu"))
    eng.start()
    eng.stop()
    with pytest.raises(NotReady, match="stopped"):
        eng.load_adapter(make_checkpoint(backbone, "late", seed=4)).result(timeout=5)
    assert eng.resident() == []
    assert eng._loads._pending == set()


def test_outputs_after_inline_loads_equal_the_three_step_path(backbone: VisionTransformer) -> None:
    ckpts = [
        make_checkpoint(backbone, "b", seed=5),
        make_checkpoint(backbone, "l", method="lora", seed=6),
    ]
    features = torch.randn(2, 128, 128, generator=torch.Generator().manual_seed(7))
    outputs = []
    for inline in (True, False):
        eng = Engine(backbone, device=torch.device("cpu"), max_wait_ms=1.0)
        eng.start()
        try:
            for c in ckpts:
                if inline:
                    future = eng.load_adapter(c)
                else:  # the loader thread's reserve -> copy -> publish
                    future = eng._loads._pool.submit(eng._loads._load, c, c.manifest.id)
                future.result(timeout=30)
            outputs.append([eng.submit(features, c.manifest.id).result(30) for c in ckpts])
        finally:
            eng.stop()
    for inline_out, step_out in zip(*outputs, strict=True):
        assert torch.equal(inline_out, step_out)


class _Worker:
    """An engine whose one command is already running on a worker that is reported dead."""

    def __init__(self) -> None:
        self.future: Future[Any] = Future()
        assert self.future.set_running_or_notify_cancel()
        self.bank: Any = None
        self.watchdog: Any = None

    def call(self, fn: Callable[[], Any], *, what: str = "a bank command") -> Future[Any]:
        return self.future

    def health(self) -> EngineHealth:
        return DEAD


def test_a_step_that_ends_after_the_wait_gave_up_is_taken_back() -> None:
    worker = _Worker()
    loads = EngineLoads(worker)
    undone: list[object] = []
    with pytest.raises(NotReady, match="step did not run: the engine is stuck"):
        loads._on_worker(lambda: None, "step", undo=undone.append)
    assert undone == []
    worker.future.set_result("reservation")  # the worker finished the step after all
    assert undone == ["reservation"]
    loads.shutdown()


def test_a_step_that_never_started_is_cancelled() -> None:
    worker = _Worker()
    worker.future = Future()  # queued, not running
    loads = EngineLoads(worker)
    undone: list[object] = []
    with pytest.raises(NotReady):
        loads._on_worker(lambda: None, "step", undo=undone.append)
    assert worker.future.cancelled()
    assert undone == []
    loads.shutdown()
