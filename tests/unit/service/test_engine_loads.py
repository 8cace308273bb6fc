"""The engine's load sequence (service.engine.loads): every wait on the worker is bounded, and a
step given up on never takes effect (cancelled, or taken back when it ends)."""

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
from service.engine import Engine
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


def test_a_load_behind_a_stuck_forward_gives_up_once_the_engine_is_dead(
    backbone: VisionTransformer,
) -> None:
    eng = Engine(backbone, device=torch.device("cpu"), max_wait_ms=1.0, stall_s=0.2, dead_s=0.5)
    slow = make_checkpoint(backbone, "slow", seed=1)
    eng.load_adapter(slow).result(timeout=30)
    entered, release = threading.Event(), threading.Event()
    real = eng.model.forward

    def held(spec: Tensor, ids: Sequence[str | None]) -> list[Tensor | None]:
        entered.set()
        assert release.wait(60)
        return real(spec, ids)

    eng.model.forward = held  # type: ignore[method-assign, assignment]
    eng.start()
    try:
        job = eng.submit(torch.randn(1, 128, 128), slow.manifest.id)
        assert entered.wait(10)
        other = make_checkpoint(backbone, "other", method="lora", seed=2)
        started = time.monotonic()
        with pytest.raises(NotReady, match="reserve a slot for other@1 did not run: .*stuck"):
            eng.load_adapter(other).result(timeout=30)
        assert time.monotonic() - started < 5  # dead_s and a wait slice or two
        eng.model.forward = real  # type: ignore[method-assign]
        release.set()
        assert job.result(timeout=30).shape[0] == 1
        # the abandoned reserve never ran: the same adapter loads now, into a clean stack
        eng.load_adapter(other).result(timeout=30)
        assert sorted(eng.resident()) == ["other@1", "slow@1"]
    finally:
        release.set()
        eng.stop()


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
