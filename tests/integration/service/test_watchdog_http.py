"""The engine watchdog seen through real HTTP (in-process ASGI, lifespan run): a forced slow
forward (a test-only wrapper of the model's forward, blocking on an event) makes ``/readyz``
answer 503 with the reason within the stall budget, a request queued behind it fails fast with
503 + Retry-After (long before its own timeout), new requests get 503 at once, ``/metrics``
shows the stall, ``/healthz`` answers 503 after the dead budget, and everything is 200 again once
the forward ends. A worker thread gone outside a shutdown fails liveness too."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from lookaside.backbone import VisionTransformer
from service.engine import Engine
from tests.integration.service.svc_support import (
    encode,
    make_checkpoint,
    put_in_store,
    serve,
    settings,
)

STALL_S = 0.3
DEAD_S = 1.0
SLACK_S = 1.5
"""Detection may lag the budget by scheduling only; generous for a shared 2-core machine."""


def _slow_forward(engine: Engine, adapter_id: str) -> tuple[threading.Event, threading.Event]:
    """(entered, release): a batch holding ``adapter_id`` blocks until ``release`` is set."""
    entered, release = threading.Event(), threading.Event()
    real = engine.model.forward

    def forward(spec: Tensor, ids: Sequence[str | None]) -> list[Tensor | None]:
        if adapter_id in ids:
            entered.set()
            assert release.wait(60), "the test never released the slow forward"
        return real(spec, ids)

    engine.model.forward = forward  # type: ignore[method-assign]
    return entered, release


def test_a_wedged_forward_flips_readiness_then_liveness_and_recovers(
    tmp_path: Path, svc_backbone: VisionTransformer
) -> None:
    root = tmp_path / "store"
    put_in_store(root, make_checkpoint(svc_backbone, "slow", seed=1))
    put_in_store(root, make_checkpoint(svc_backbone, "fast", method="lora", seed=2))
    clip = encode(1.0)
    cfg = settings(
        root,
        warmup=False,
        request_timeout_s=30.0,
        engine_stall_s=STALL_S,
        engine_dead_s=DEAD_S,
    )

    async def main() -> None:
        async with serve(cfg, svc_backbone) as (app, client):
            engine = app.state.lookaside.engine
            # the watchdog budgets of this test, whether or not the app wires the settings
            engine.watchdog.stall_s, engine.watchdog.dead_s = STALL_S, DEAD_S
            entered, release = _slow_forward(engine, "slow@1")

            async def classify(adapter: str) -> tuple[float, int, dict[str, str], str]:
                started = time.monotonic()
                r = await client.post(
                    "/classify",
                    params={"adapter": adapter},
                    content=clip,
                    headers={"Content-Type": "audio/wav"},
                )
                return time.monotonic() - started, r.status_code, dict(r.headers), r.text

            assert (await client.get("/readyz")).status_code == 200
            slow = asyncio.create_task(classify("slow"))
            assert await asyncio.to_thread(entered.wait, 30)
            entered_at = time.monotonic()
            queued = asyncio.create_task(classify("fast"))

            waited, status, headers, text = await queued
            assert status == 503, text
            assert headers["retry-after"] == "1"
            assert "the engine is stalled" in text
            assert time.monotonic() - entered_at < STALL_S + SLACK_S  # not its 30 s timeout

            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.headers["retry-after"] == "1"
            reason = ready.json()["reason"]
            assert "the engine is stalled: a forward" in reason
            assert "slow@1" in reason
            assert "over engine_stall_s=0.3" in reason
            assert (await client.get("/healthz")).status_code == 200  # not dead yet

            waited, status, _, text = await classify("fast")  # new work: refused at once
            assert status == 503, text
            assert waited < SLACK_S
            metrics = (await client.get("/metrics")).text
            assert "lookaside_engine_stalled 1.0" in metrics
            assert "lookaside_engine_stalls_total 1.0" in metrics

            await asyncio.sleep(max(0.0, entered_at + DEAD_S - time.monotonic()) + 0.05)
            dead = await client.get("/healthz")
            assert dead.status_code == 503
            assert dead.json() == {"status": "engine stalled"}

            release.set()
            _, status, _, text = await slow
            assert status == 200, text  # the slow request itself got its answer
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.get("/healthz")).status_code == 200
            _, status, _, text = await classify("fast")
            assert status == 200, text
            assert "lookaside_engine_stalled 0.0" in (await client.get("/metrics")).text

            # a worker that is gone outside a shutdown is not alive either
            await asyncio.to_thread(engine.stop, drain=True)
            gone = await client.get("/healthz")
            assert gone.status_code == 503
            assert gone.json() == {"status": "engine worker stopped"}

    asyncio.run(main())
