"""The service under load, through HTTP: mixed traffic over adapters of different methods with bad
requests mixed in, live swaps, more adapters than the resident limit, memory over many
upload/delete cycles. Every good answer is checked against the adapter run alone through the
library (svc_support.reference_scores)."""

from __future__ import annotations

import asyncio
import gc
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import torch

from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import AdapterCheckpoint
from tests.integration.service.svc_support import (
    ADMIN,
    LABELS,
    SHORT_FEATURES,
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

_WAV = {"Content-Type": "audio/wav"}
_AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _matches(result: dict[str, Any], ref: torch.Tensor, k: int = 5) -> bool:
    got = scores_by_label(result["labels"])
    want = expected_top(ref, LABELS, k)
    return list(got) == list(want) and all(
        abs(got[label] - score) < 2e-5 for label, score in want.items()
    )


def test_mixed_traffic_concurrency_16_every_row_gets_its_own_adapter(
    tmp_path: Path, svc_backbone: VisionTransformer
) -> None:
    methods = ["bottleneck", "lora", "loaa", "soft_moa", "prompt", "linear"]
    root = tmp_path / "store"
    ckpts: dict[str, AdapterCheckpoint] = {}
    for i, method in enumerate(methods):
        features = SHORT_FEATURES if method == "lora" else None
        name = f"m-{method.replace('_', '-')}"
        kw: dict[str, Any] = {"features": features} if features else {}
        ckpts[name] = make_checkpoint(svc_backbone, name, method=method, seed=10 + i, **kw)
        put_in_store(root, ckpts[name])
    clips = [encode(0.7 + 0.5 * i, rate=(8000, 16000, 22050)[i % 3], seed=i) for i in range(4)]
    refs = {
        (name, c): reference_scores(svc_backbone, ckpt, clip)
        for name, ckpt in ckpts.items()
        for c, clip in enumerate(clips)
    }
    names = list(ckpts)
    rng = random.Random(0)
    plan: list[tuple[str, int, str]] = []  # (kind, clip index, adapter ref)
    for i in range(96):
        if i % 6 == 5:
            plan.append((rng.choice(["corrupt", "unknown", "empty"]), 0, rng.choice(names)))
        elif i % 7 == 3:
            plan.append(("good", i % 4, ",".join(rng.sample(names, 3))))
        else:
            plan.append(("good", i % 4, rng.choice(names)))

    async def one(client: httpx.AsyncClient, sem: asyncio.Semaphore, item: Any) -> None:
        kind, c, ref = item
        body = {"corrupt": b"\x00garbage" * 300, "empty": b""}.get(kind, clips[c])
        if kind == "unknown":
            ref = "nope@3"
        async with sem:
            r = await client.post(
                "/classify", files={"file": ("c.wav", body)}, data={"adapter": ref}
            )
        if kind != "good":
            assert r.status_code in (404, 415, 422), r.text
            return
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["adapter"] for x in results] == ref.split(",")
        for result in results:
            assert _matches(result, refs[(result["adapter"], c)]), (result, ref, c)

    async def main() -> None:
        cfg = settings(root, max_batch_size=16, max_wait_ms=5)
        async with serve(cfg, svc_backbone) as (_, client):
            sem = asyncio.Semaphore(16)
            await asyncio.gather(*[one(client, sem, item) for item in plan])
            metrics = (await client.get("/metrics")).text
        # batches really mixed adapters: some batch held more than one
        adapters_sum = _sample(metrics, "lookaside_batch_adapters_sum")
        adapters_count = _sample(metrics, "lookaside_batch_adapters_count")
        assert adapters_sum > adapters_count
        # bad requests never reached a batch: the rows run are exactly the good requests' windows
        # (plus one warm-up row per token grid: 128 and 64 frames)
        good_rows = sum(
            refs[(name, c)].shape[0]
            for kind, c, ref in plan
            if kind == "good"
            for name in ref.split(",")
        )
        assert _sample(metrics, "lookaside_batch_rows_sum") == good_rows + 2

    asyncio.run(main())


def _sample(metrics: str, name: str, labels: str = "") -> float:
    prefix = name + (("{" + labels + "}") if labels else "")
    for line in metrics.splitlines():
        if line.startswith(prefix + " "):
            return float(line.split()[-1])
    return 0.0


def test_live_swap_50_times_zero_errors_and_scores_match_the_version_named(
    tmp_path: Path, svc_backbone: VisionTransformer
) -> None:
    weights = {
        1: make_checkpoint(svc_backbone, "swap", method="loaa", seed=31),
        2: make_checkpoint(svc_backbone, "swap", method="loaa", seed=32),
    }
    uploads = {v: checkpoint_bytes(c) for v, c in weights.items()}
    clip = encode(1.0, seed=3)
    refs = {v: reference_scores(svc_backbone, c, clip) for v, c in weights.items()}
    assert not torch.allclose(refs[1], refs[2], atol=1e-3)  # distinguishable outputs

    async def upload(client: httpx.AsyncClient, v: int) -> httpx.Response:
        manifest, blob = uploads[v]
        return await client.post(
            "/adapters?activate=true",
            files={"manifest": ("manifest.json", manifest), "weights": ("a.safetensors", blob)},
            headers=_AUTH,
        )

    async def main() -> None:
        async with serve(settings(tmp_path / "store"), svc_backbone) as (_, client):
            r = await upload(client, 1)
            assert r.status_code == 201, r.text
            done = asyncio.Event()
            served: dict[int, int] = {1: 0, 2: 0}
            errors: list[str] = []

            async def traffic() -> None:
                while not done.is_set():
                    r = await client.post("/classify?adapter=swap", content=clip, headers=_WAV)
                    if r.status_code != 200:
                        errors.append(r.text)
                        continue
                    (result,) = r.json()["results"]
                    served[result["version"]] += 1
                    if not _matches(result, refs[result["version"]]):
                        errors.append(f"scores of v{result['version']} do not match: {result}")

            workers = [asyncio.create_task(traffic()) for _ in range(4)]
            for i in range(50):
                v = 2 if i % 2 == 0 else 1
                r = await upload(client, v)  # identical content: the stored version, activated
                assert r.status_code in (200, 201), r.text
                assert r.json()["version"] == v
                await asyncio.sleep(0.01)
            done.set()
            await asyncio.gather(*workers)
            assert errors == []
            assert served[1] > 0
            assert served[2] > 0

    asyncio.run(main())


def test_more_adapters_than_resident_limit_pinned_never_evicted(
    tmp_path: Path, svc_backbone: VisionTransformer
) -> None:
    root = tmp_path / "store"
    ckpts = {
        f"a{i}": make_checkpoint(svc_backbone, f"a{i}", method=m, seed=40 + i)
        for i, m in enumerate(["lora", "bottleneck", "lora", "loaa", "linear"])
    }
    ckpts["keep"] = make_checkpoint(svc_backbone, "keep", method="lora", seed=49)
    for ckpt in ckpts.values():
        put_in_store(root, ckpt)
    clip = encode(1.0, seed=5)
    refs = {n: reference_scores(svc_backbone, c, clip) for n, c in ckpts.items()}

    async def main() -> None:
        cfg = settings(root, max_resident_adapters=2, pinned=["keep"])
        async with serve(cfg, svc_backbone) as (app, client):
            engine = app.state.lookaside.engine
            order = [*ckpts] * 3
            for name in order:  # sequential round robin: a load on demand for most requests
                r = await client.post(f"/classify?adapter={name}", content=clip, headers=_WAV)
                assert r.status_code == 200, r.text
                assert _matches(r.json()["results"][0], refs[name])
                assert "keep@1" in engine.resident()
            rs = await asyncio.gather(
                *[client.post(f"/classify?adapter={n}", content=clip, headers=_WAV) for n in order]
            )
            assert [r.status_code for r in rs] == [200] * len(order)
            metrics = (await client.get("/metrics")).text
            evictions = sum(
                _sample(metrics, "lookaside_adapter_evictions_total", f'adapter="{n}"')
                for n in ckpts
            )
            assert evictions > 0
            assert 'lookaside_adapter_evictions_total{adapter="keep"}' not in metrics
            assert "keep@1" in engine.resident()

    asyncio.run(main())


def test_memory_stays_flat_over_200_upload_delete_cycles(
    tmp_path: Path, svc_backbone: VisionTransformer
) -> None:
    # rank 64 on every site: ~260 kB per adapter, so a leak of one per cycle would show (~50 MB)
    ckpt = make_checkpoint(svc_backbone, "cycle", method="bottleneck", config={"rank": 64}, seed=7)
    manifest, blob = checkpoint_bytes(ckpt)
    clip = encode(0.5)
    process = psutil.Process()

    async def cycle(client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/adapters",
            files={"manifest": ("manifest.json", manifest), "weights": ("a.safetensors", blob)},
            headers=_AUTH,
        )
        assert r.status_code == 201, r.text
        r = await client.post("/classify?adapter=cycle", content=clip, headers=_WAV)
        assert r.status_code == 200, r.text
        r = await client.delete("/adapters/cycle", headers=_AUTH)
        assert r.status_code == 200, r.text

    # the store on tmpfs where there is one: this measures memory, not fsync latency
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path / "store"

    async def main() -> None:
        async with serve(settings(root, max_wait_ms=0), svc_backbone) as (app, client):
            for _ in range(20):  # warm allocator pools and caches
                await cycle(client)
            gc.collect()
            before = process.memory_info().rss
            for _ in range(200):
                await cycle(client)
            gc.collect()
            grown = process.memory_info().rss - before
            engine = app.state.lookaside.engine
            assert engine.resident() == []
            assert len(engine.bank.heads) == 0
            assert grown < 20 * 1024 * 1024, f"RSS grew {grown / 2**20:.1f} MiB over 200 cycles"

    try:
        asyncio.run(main())
    finally:
        if root.parent == shm:
            shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("mixing", ["on", "off"])
def test_heavily_skewed_traffic(
    tmp_path: Path, svc_backbone: VisionTransformer, mixing: str
) -> None:
    """31 requests of one adapter and 1 of another in flight together; batches of one row."""
    root = tmp_path / "store"
    big = make_checkpoint(svc_backbone, "big", method="lora", seed=51)
    small = make_checkpoint(svc_backbone, "small", method="prompt", seed=52)
    put_in_store(root, big)
    put_in_store(root, small)
    clip = encode(1.0, seed=8)
    refs = {
        "big": reference_scores(svc_backbone, big, clip),
        "small": reference_scores(svc_backbone, small, clip),
    }

    async def main() -> None:
        cfg = settings(root, mixing=mixing, max_batch_size=32, max_wait_ms=20)
        async with serve(cfg, svc_backbone) as (_, client):
            names = ["big"] * 31 + ["small"]
            rs = await asyncio.gather(
                *[client.post(f"/classify?adapter={n}", content=clip, headers=_WAV) for n in names]
            )
            for n, r in zip(names, rs, strict=True):
                assert r.status_code == 200, r.text
                assert _matches(r.json()["results"][0], refs[n])
            r = await client.post("/classify?adapter=small", content=clip, headers=_WAV)
            assert _matches(r.json()["results"][0], refs["small"])

    asyncio.run(main())
