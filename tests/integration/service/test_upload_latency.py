"""Upload-to-servable and request timeouts through real HTTP (in-process ASGI, lifespan run).

- ``POST /adapters?activate=true`` answers once the version is servable, loaded from the upload's
  validated tensors (never read back from the store), and serves what the library computes.
- A request whose adapter load on demand is slower than the request timeout answers 504 in about
  the timeout; the load goes on and the next request is served by it.
- Time spent waiting in the featurize pool counts against the timeout too (504, work dropped).
Timing goals (p99 upload-to-servable) live in ``benchmarks/serve_http.py``, not here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import AdapterCheckpoint
from service.deps import AppState
from service.featurize import featurize
from tests.integration.service.svc_support import (
    ADMIN,
    LABELS,
    checkpoint_bytes,
    encode,
    make_checkpoint,
    reference_scores,
    scores_by_label,
    serve,
    settings,
)

AUTH = {"Authorization": f"Bearer {ADMIN}"}
WAV = {"Content-Type": "audio/wav"}


def _state(app: FastAPI) -> AppState:
    state = app.state.lookaside
    assert isinstance(state, AppState)
    return state


async def _upload(
    client: httpx.AsyncClient, ckpt: AdapterCheckpoint, *, activate: bool
) -> httpx.Response:
    manifest, weights = checkpoint_bytes(ckpt)
    files = {"manifest": ("manifest.json", manifest), "weights": ("adapter.safetensors", weights)}
    params = {"activate": "true"} if activate else {}
    return await client.post("/adapters", files=files, headers=AUTH, params=params)


def test_upload_with_activate_answers_when_servable_without_reading_the_store_back(
    tmp_path: Path, svc_backbone: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_checkpoint(svc_backbone, "esc50", seed=1)
    second = make_checkpoint(svc_backbone, "esc50", seed=2)
    clip = encode(1.0, seed=3)

    async def main() -> None:
        cfg = settings(tmp_path / "store", warmup=False)
        async with serve(cfg, svc_backbone) as (app, client):
            state = _state(app)
            assert state.store is not None
            assert state.registry is not None
            reads: list[tuple[str, int]] = []
            store_load = state.store.load

            def counted(name: str, version: int, *, backbone: VisionTransformer) -> Any:
                reads.append((name, version))
                return store_load(name, version, backbone=backbone)

            monkeypatch.setattr(state.store, "load", counted)
            for ckpt, version in ((first, 1), (second, 2)):
                r = await _upload(client, ckpt, activate=True)
                assert r.status_code == 201, r.text
                assert (r.json()["version"], r.json()["active"]) == (version, True)
                # servable when answered: resident and ready before any request asks for it
                status = next(s for s in state.registry.status("esc50") if s.version == version)
                assert (status.state, status.resident, status.loads) == ("ready", True, 1)
                r = await client.post(
                    f"/classify?adapter=esc50@{version}", content=clip, headers=WAV
                )
                assert r.status_code == 200, r.text
                (result,) = r.json()["results"]
                assert result["version"] == version
                expected = reference_scores(svc_backbone, ckpt, clip).mean(dim=0)
                got = scores_by_label(result["labels"])
                for label, score in got.items():
                    want = float(expected[LABELS.index(label)])
                    assert score == pytest.approx(want, abs=1e-5), label
            assert reads == []  # both versions loaded from the validated uploads in memory
            assert state.registry.stats().loads == {"esc50": 2}

    asyncio.run(main())


def test_an_adapter_load_slower_than_the_timeout_answers_504_and_goes_on(
    tmp_path: Path, svc_backbone: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = encode(1.0, seed=4)

    async def main() -> None:
        cfg = settings(tmp_path / "store", warmup=False, request_timeout_s=1.0)
        async with serve(cfg, svc_backbone) as (app, client):
            state = _state(app)
            assert state.engine is not None
            assert state.registry is not None
            r = await _upload(client, make_checkpoint(svc_backbone, "slow", seed=5), activate=False)
            assert r.status_code == 201, r.text  # active in the store, not resident yet
            release = threading.Event()
            load_adapter = state.engine.load_adapter

            def held(ckpt: AdapterCheckpoint, **kw: Any) -> Future[None]:
                out: Future[None] = Future()

                def later() -> None:
                    release.wait(30)
                    inner = load_adapter(ckpt, **kw)
                    inner.add_done_callback(lambda f: out.set_result(f.result()))

                threading.Thread(target=later, daemon=True).start()
                return out

            monkeypatch.setattr(state.engine, "load_adapter", held)
            started = time.monotonic()
            r = await client.post("/classify?adapter=slow", content=clip, headers=WAV)
            elapsed = time.monotonic() - started
            assert r.status_code == 504, r.text
            assert "still loading" in r.json()["detail"]
            assert elapsed < 10.0  # about the 1 s timeout, not the load's duration
            (status,) = state.registry.status("slow")
            assert (status.state, status.in_flight) == ("loading", 0)
            release.set()  # the load was never cancelled: it finishes for the next request
            for _ in range(100):
                (status,) = state.registry.status("slow")
                if status.state == "ready":
                    break
                await asyncio.sleep(0.05)
            r = await client.post("/classify?adapter=slow", content=clip, headers=WAV)
            assert r.status_code == 200, r.text
            assert state.registry.stats().loads == {"slow": 1}

    asyncio.run(main())


def test_waiting_for_the_featurize_pool_counts_against_the_timeout(
    tmp_path: Path, svc_backbone: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = make_checkpoint(svc_backbone, "esc50", seed=6)
    clip = encode(1.0, seed=7)
    release = threading.Event()
    calls: list[float] = []

    def slow(*args: Any, **kw: Any) -> Any:
        calls.append(time.monotonic())
        release.wait(30)
        return featurize(*args, **kw)

    async def main() -> None:
        cfg = settings(tmp_path / "store", warmup=False, request_timeout_s=1.0, featurize_threads=1)
        async with serve(cfg, svc_backbone) as (_, client):
            r = await _upload(client, ckpt, activate=True)
            assert r.status_code == 201, r.text
            monkeypatch.setattr("service.routes.classify.featurize", slow)
            started = time.monotonic()
            # the first holds the only featurize thread; the second waits in the pool's queue
            answers = await asyncio.gather(
                *(client.post("/classify?adapter=esc50", content=clip, headers=WAV) for _ in "ab")
            )
            elapsed = time.monotonic() - started
            assert [a.status_code for a in answers] == [504, 504], [a.text for a in answers]
            assert elapsed < 10.0
            release.set()
            await asyncio.sleep(0.2)
            assert len(calls) == 1  # the queued request's work was dropped, never started
            monkeypatch.setattr("service.routes.classify.featurize", featurize)
            r = await client.post("/classify?adapter=esc50", content=clip, headers=WAV)
            assert r.status_code == 200, r.text

    asyncio.run(main())


def test_upload_parts_parsed_in_memory_still_refuse_malformed_bodies(
    tmp_path: Path, svc_backbone: VisionTransformer
) -> None:
    manifest, _ = checkpoint_bytes(make_checkpoint(svc_backbone, "esc50", seed=9))

    async def main() -> None:
        cfg = settings(tmp_path / "store", warmup=False)
        async with serve(cfg, svc_backbone) as (_, client):
            for content_type, body in (
                ("multipart/form-data", b"no boundary"),
                ("multipart/form-data; boundary=xyz", b"--xyz\r\nnot a part header\r\n\r\n"),
            ):
                r = await client.post(
                    "/adapters", content=body, headers={**AUTH, "Content-Type": content_type}
                )
                assert r.status_code == 422, r.text  # BadRequest
                assert "malformed multipart body" in r.json()["detail"]
            # a file part over Starlette's 1 MB spool size is read from memory and validated
            junk = bytes(range(256)) * (8 * 1024)  # 2 MiB
            files = {"manifest": ("manifest.json", manifest), "weights": ("a.safetensors", junk)}
            r = await client.post("/adapters", files=files, headers=AUTH)
            assert r.status_code == 422, r.text
            assert (await client.get("/adapters")).json()["adapters"] == []

    asyncio.run(main())
