"""The engine watchdog: a forward (or bank command) that runs past ``stall_s`` marks the engine
stalled (health, ERROR log naming the batch, metric), queued jobs fail fast with 503 instead of
waiting for their own timeouts, new work is refused, ``dead`` follows after ``dead_s``, and the
engine recovers when the work ends. The slow forward is a test-only wrapper of the model's
forward that blocks on an event; nothing in the product is slowed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
import torch
from torch import Tensor

from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import AdapterCheckpoint
from service.engine import Engine
from service.engine.watchdog import Watchdog
from service.errors import NotReady
from tests.integration.service.svc_support import make_checkpoint, tiny

STALL_S = 0.3
DEAD_S = 0.8
SLACK_S = 1.0
"""Detection may lag the budget by scheduling only; generous for a shared 2-core machine."""


@pytest.fixture(scope="module")
def backbone() -> VisionTransformer:
    return tiny()


@pytest.fixture(scope="module")
def adapters(backbone: VisionTransformer) -> dict[str, AdapterCheckpoint]:
    return {
        "slow": make_checkpoint(backbone, "slow", seed=1),
        "fast": make_checkpoint(backbone, "fast", method="lora", seed=2),
    }


class SlowForward:
    """Wraps the engine's model forward: a batch holding ``adapter_id`` sets ``entered`` and
    blocks until ``release`` is set."""

    def __init__(self, engine: Engine, adapter_id: str) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.entered_at = 0.0
        real = engine.model.forward

        def forward(spec: Tensor, ids: Sequence[str | None]) -> list[Tensor | None]:
            if adapter_id in ids:
                self.entered_at = time.monotonic()
                self.entered.set()
                assert self.release.wait(60), "the test never released the slow forward"
            return real(spec, ids)

        engine.model.forward = forward  # type: ignore[method-assign]


@pytest.fixture
def engine(backbone: VisionTransformer, adapters: dict[str, AdapterCheckpoint]) -> Iterator[Engine]:
    eng = Engine(
        backbone, device=torch.device("cpu"), max_wait_ms=1.0, stall_s=STALL_S, dead_s=DEAD_S
    )
    for ckpt in adapters.values():
        eng.load_adapter(ckpt).result(timeout=30)
    eng.start()
    yield eng
    eng.stop(drain=False, timeout=30)


def feats(seed: int) -> Tensor:
    return torch.randn(1, 128, 128, generator=torch.Generator().manual_seed(seed))


def test_a_slow_forward_stalls_fails_the_queue_fast_and_recovers(
    engine: Engine, adapters: dict[str, AdapterCheckpoint], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.engine")
    slow_id, fast_id = adapters["slow"].manifest.id, adapters["fast"].manifest.id
    gate = SlowForward(engine, slow_id)
    slow = engine.submit(feats(1), slow_id, request_id="req-slow", timeout_s=60)
    assert gate.entered.wait(30)
    assert not engine.health().stalled  # under the budget so far
    queued = engine.submit(feats(2), fast_id, request_id="req-queued", timeout_s=30)

    # the queued job fails fast with 503 when the forward passes stall_s, not at its 30 s timeout
    exc = queued.exception(timeout=STALL_S + SLACK_S + 5)
    failed_at = time.monotonic()
    assert isinstance(exc, NotReady)
    assert "the engine is stalled by a forward running over engine_stall_s=0.3" in str(exc)

    health = engine.health()
    assert health.since is not None  # when the forward began
    assert STALL_S <= failed_at - health.since < STALL_S + SLACK_S
    assert health.stalled
    assert not health.dead
    assert health.reason is not None
    for part in ("forward", "1 rows", slow_id, "req-slow", "over engine_stall_s=0.3"):
        assert part in health.reason
    with pytest.raises(NotReady, match="the engine is stalled") as refused:
        engine.submit(feats(3), fast_id)
    assert refused.value.reason == "engine_stalled"
    assert engine.metrics.engine_stalled._value.get() == 1
    assert engine.metrics.engine_stalls._value.get() == 1
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "engine stalled" in record.getMessage()
    assert slow_id in record.getMessage()
    assert "req-slow" in record.getMessage()
    assert "failing 1 queued jobs with 503" in record.getMessage()

    # dead after dead_s of the same forward (liveness fails)
    time.sleep(max(0.0, gate.entered_at + DEAD_S - time.monotonic()) + 0.05)
    assert engine.health().dead

    # the forward ends: its own answer arrives, the engine is ready again
    gate.release.set()
    assert slow.result(timeout=30).shape[0] == 1
    assert not engine.health().stalled
    assert engine.metrics.engine_stalled._value.get() == 0
    assert any("engine recovered" in r.getMessage() for r in caplog.records)
    assert engine.submit(feats(4), fast_id).result(timeout=30).shape[0] == 1
    assert engine.metrics.engine_stalls._value.get() == 1  # one stall, reported once


def test_a_slow_bank_command_stalls_the_engine_too(engine: Engine) -> None:
    release = threading.Event()
    entered = threading.Event()

    def stuck() -> str:
        entered.set()
        assert release.wait(60)
        return "done"

    fut = engine.call(stuck, what="unload stuck@1")
    assert entered.wait(30)
    queued = engine.submit(feats(5), None, timeout_s=30)
    assert isinstance(queued.exception(timeout=STALL_S + SLACK_S + 5), NotReady)
    reason = engine.health().reason
    assert reason is not None
    assert "bank command (unload stuck@1)" in reason
    release.set()
    assert fut.result(timeout=30) == "done"
    assert not engine.health().stalled


def test_the_watchdog_reports_each_stall_once_and_recovers_on_the_working_thread() -> None:
    events: list[tuple[str, str]] = []
    flagged = threading.Event()

    def on_stall(activity: object, age: float) -> None:
        events.append(("stall", threading.current_thread().name))
        flagged.set()

    def on_recover(activity: object, duration: float) -> None:
        events.append(("recover", threading.current_thread().name))

    dog = Watchdog(stall_s=0.05, dead_s=0.05, on_stall=on_stall, on_recover=on_recover)
    dog.start()
    try:
        with dog.watch("forward", "quick"):
            pass  # well under the budget: nothing reported
        with dog.watch("forward", "slow"):
            assert flagged.wait(10)
            assert dog.health().dead
        assert not dog.health().stalled
    finally:
        dog.stop()
    assert events == [("stall", "lookaside-watchdog"), ("recover", threading.current_thread().name)]
    with pytest.raises(ValueError, match="need 0 < stall_s <= dead_s"):
        Watchdog(stall_s=2, dead_s=1, on_stall=on_stall, on_recover=on_recover)
