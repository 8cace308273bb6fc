"""The server with ``engine=onnxruntime`` through real HTTP: every answer equals the library run
alone in eager PyTorch (svc_support.reference_scores), before and after an upload, a swap and a
rollback, and none of those re-exports a graph."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from lookaside.backbone import VisionTransformer
from lookaside.onnx.runner import OrtFeatures
from tests.integration.service.svc_support import (
    ADMIN,
    LABELS,
    checkpoint_bytes,
    encode,
    expected_top,
    make_checkpoint,
    put_in_store,
    reference_scores,
    scores_by_label,
    serve,
    settings,
)

AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _check(result: dict[str, Any], want: dict[str, float]) -> None:
    got = scores_by_label(result["labels"])
    assert list(got) == list(want), (got, want)
    for label, score in want.items():
        assert got[label] == pytest.approx(score, abs=1e-4)


def test_onnxruntime_engine_serves_swaps_and_rollbacks_like_eager(
    tmp_path: Path, svc_backbone: VisionTransformer
) -> None:
    store = tmp_path / "store"
    v1 = make_checkpoint(svc_backbone, "esc50", method="bottleneck", seed=1)
    v2 = make_checkpoint(svc_backbone, "esc50", method="bottleneck", seed=2, version=2)
    speech = make_checkpoint(svc_backbone, "speech", method="lora", seed=3)
    put_in_store(store, v1)
    put_in_store(store, speech)
    clip = encode(2.0, rate=16_000, seed=7)
    cfg = settings(store, engine="onnxruntime", ort_cache=tmp_path / "graphs")

    async def main() -> None:
        async with serve(cfg, svc_backbone) as (app, client):
            runner = app.state.lookaside.engine.model.runner
            assert isinstance(runner, OrtFeatures)
            assert await asyncio.to_thread(runner.wait_idle, 300)

            async def classify(expect: dict[str, tuple[int, Any]]) -> None:
                r = await client.post(
                    "/classify?adapter=esc50,speech&top_k=3", files={"file": ("c.wav", clip)}
                )
                assert r.status_code == 200, r.text
                for result in r.json()["results"]:
                    version, ckpt = expect[result["adapter"]]
                    assert result["version"] == version
                    ref = reference_scores(svc_backbone, ckpt, clip)
                    _check(result, expected_top(ref, LABELS, 3))

            await classify({"esc50": (1, v1), "speech": (1, speech)})
            builds, runs = runner.cache.builds, runner.runs
            assert runs > 0
            assert runner.fallbacks <= 2
            assert not runner.failures
            manifest, weights = checkpoint_bytes(v2)
            r = await client.post(
                "/adapters",
                files={"manifest": ("manifest.json", manifest), "weights": ("w", weights)},
                params={"activate": "true"},
                headers=AUTH,
            )
            assert r.status_code in (200, 201), r.text
            await classify({"esc50": (2, v2), "speech": (1, speech)})
            r = await client.post("/adapters/esc50/activate", json={"version": 1}, headers=AUTH)
            assert r.status_code == 200, r.text
            await classify({"esc50": (1, v1), "speech": (1, speech)})
            assert runner.cache.builds == builds, "a swap or rollback re-exported a graph"
            assert runner.runs > runs
            text = (await client.get("/metrics")).text
            line = 'lookaside_onnx_batches_total{runtime="onnxruntime"} '
            (sample,) = [x for x in text.splitlines() if x.startswith(line)]
            assert float(sample.removeprefix(line)) == runner.runs
            assert "lookaside_onnx_graphs_building 0.0" in text

    asyncio.run(main())
