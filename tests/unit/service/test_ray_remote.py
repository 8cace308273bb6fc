"""The ingress's remote engine, against a scripted stand-in for Ray Serve's deployment handle:
retries after a lost replica (bounded), errors rebuilt as the same class and message one process
raises, the same 422 before anything is sent, and cancellation reaching the call. (The real
handle, router and replicas are exercised in tests/e2e/test_ray_serve.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError

from lookaside.errors import AdapterNotFound
from lookaside.tasks import CLIP
from service.errors import (
    NotReady,
    OverBudget,
    QueueFull,
    ReplicaUnavailable,
    ServiceError,
    status_of,
)
from service.ray.metrics import ReplicaMetrics
from service.ray.remote import MAX_RETRIES, RemoteEngine
from service.ray.wire import RemoteError, ReplicaAnswer, replica_settings, settings_payload
from tests.integration.service.svc_support import settings, tiny


class ScriptedHandle:
    """``handle.options(multiplexed_model_id=...).run.remote(...)``: each call takes the next
    step (an exception to raise, an answer to return, or an Event to wait on forever)."""

    def __init__(self, *steps: Any) -> None:
        self.steps = list(steps)
        self.calls: list[str] = []
        self.cancelled = 0
        self._model_id = ""

    def options(self, *, multiplexed_model_id: str) -> ScriptedHandle:
        self._model_id = multiplexed_model_id
        return self

    @property
    def run(self) -> ScriptedHandle:
        return self

    def remote(self, task_name: str, inputs: Any, request_id: str, timeout: float) -> Any:
        self.calls.append(self._model_id)
        step = self.steps.pop(0)

        async def answer() -> Any:
            if isinstance(step, BaseException):
                raise step
            if isinstance(step, asyncio.Event):
                try:
                    await step.wait()
                except asyncio.CancelledError:
                    self.cancelled += 1
                    raise
            return step

        return answer()


def _ok(replica: str = "r1", loaded: bool = False) -> ReplicaAnswer:
    return ReplicaAnswer(replica=replica, logits=torch.ones(2, 5), loaded=loaded, queue_depth=3)


def _engine(tmp_path: Path, handle: ScriptedHandle, **overrides: Any) -> RemoteEngine:
    cfg = settings(tmp_path, **overrides)
    return RemoteEngine(handle, tiny(), cfg, ReplicaMetrics(CollectorRegistry()))


def _inputs(frames: int = 128) -> tuple[torch.Tensor, ...]:
    return (torch.zeros(2, frames, 128),)


async def _submit(engine: RemoteEngine, timeout_s: float = 10.0) -> torch.Tensor:
    fut = engine.submit_task(CLIP, _inputs(), "kws@3", request_id="t", timeout_s=timeout_s)
    return await asyncio.wrap_future(fut)


def test_a_lost_replica_is_retried_and_recorded(tmp_path: Path) -> None:
    handle = ScriptedHandle(ActorDiedError(), _ok(loaded=True))
    engine = _engine(tmp_path, handle)
    logits = asyncio.run(_submit(engine))
    assert torch.equal(logits, torch.ones(2, 5))
    assert handle.calls == ["kws@3", "kws@3"]  # the version travels with every try
    assert engine.metrics.retries.labels(reason="ActorDiedError")._value.get() == 1
    assert engine.metrics.loads.labels(replica="r1", adapter="kws")._value.get() == 1
    assert engine.resident() == []  # the answer listed no residents


def test_retries_are_bounded_then_503(tmp_path: Path) -> None:
    handle = ScriptedHandle(*[ActorDiedError() for _ in range(MAX_RETRIES + 1)])
    with pytest.raises(ReplicaUnavailable, match="retries found none") as info:
        asyncio.run(_submit(_engine(tmp_path, handle)))
    assert status_of(info.value) == 503
    assert len(handle.calls) == MAX_RETRIES + 1


def test_errors_come_back_as_the_same_class_and_message(tmp_path: Path) -> None:
    missing = AdapterNotFound("unknown adapter 'kws@3'; versions of 'kws': 1, 2 (active 2)")
    handle = ScriptedHandle(ReplicaAnswer(replica="r1", logits=None, error=RemoteError.of(missing)))
    with pytest.raises(AdapterNotFound) as info:
        asyncio.run(_submit(_engine(tmp_path, handle)))
    assert str(info.value) == str(missing)
    assert status_of(info.value) == 404


def test_a_stalled_replica_is_retried_elsewhere(tmp_path: Path) -> None:
    stalled = NotReady("engine stalled", reason="engine_stalled")
    handle = ScriptedHandle(
        ReplicaAnswer(replica="r1", logits=None, error=RemoteError.of(stalled)), _ok("r2")
    )
    engine = _engine(tmp_path, handle)
    assert torch.equal(asyncio.run(_submit(engine)), torch.ones(2, 5))
    assert engine.metrics.retries.labels(reason="NotReady")._value.get() == 1


def test_backpressure_is_429(tmp_path: Path) -> None:
    handle = ScriptedHandle(BackPressureError(num_queued_requests=9, max_queued_requests=8))
    with pytest.raises(QueueFull):
        asyncio.run(_submit(_engine(tmp_path, handle)))


def test_a_row_over_the_token_budget_is_refused_before_sending(tmp_path: Path) -> None:
    handle = ScriptedHandle()
    engine = _engine(tmp_path, handle, max_batch_tokens=64)

    async def go() -> None:
        engine.submit_task(CLIP, _inputs(frames=256), "kws@3", request_id="t", timeout_s=5.0)

    with pytest.raises(OverBudget, match="128 tokens, over .* max_batch_tokens=64"):
        asyncio.run(go())
    assert handle.calls == []


def test_cancelling_the_future_cancels_the_call(tmp_path: Path) -> None:
    never = asyncio.Event()
    handle = ScriptedHandle(never)
    engine = _engine(tmp_path, handle)

    async def go() -> None:
        fut = engine.submit_task(CLIP, _inputs(), "kws@3", request_id="t", timeout_s=30.0)
        await asyncio.sleep(0.05)
        assert engine.queue_depth == 1
        fut.cancel()  # what the pipeline does for an abandoned request
        for _ in range(100):
            await asyncio.sleep(0.01)
            if engine.queue_depth == 0:
                break

    asyncio.run(go())
    assert handle.cancelled == 1
    assert engine.queue_depth == 0


def test_remote_error_rebuild_keeps_class_message_and_reason() -> None:
    err = RemoteError.of(NotReady("stopping", reason="shutting_down")).rebuild()
    assert type(err) is NotReady
    assert (str(err), getattr(err, "reason", None)) == ("stopping", "shutting_down")
    unknown = RemoteError("SomethingElse", "boom").rebuild()
    assert isinstance(unknown, ServiceError)
    assert status_of(unknown) == 500


def test_settings_travel_without_the_token_with_absolute_paths(tmp_path: Path) -> None:
    cfg = settings(Path("rel-store"), ray_adapters_per_replica=7)
    payload = settings_payload(cfg)
    assert "admin_token" not in payload
    assert Path(payload["store"]).is_absolute()
    assert payload["ray"] is True
    replica = replica_settings(payload)
    assert replica.max_resident_adapters == 7
    assert replica.admin_token.get_secret_value() == ""
