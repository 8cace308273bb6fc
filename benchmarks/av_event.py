"""``POST /av-event`` latency for one video through the real app (printed, never asserted).

    python -m benchmarks.av_event                      # ViT-B/16 (random weights), 10 s, CPU
    python -m benchmarks.av_event --preset test_vit_av --seconds 30 --requests 3

The app runs in-process (its lifespan, engine thread and featurize pool; HTTP over ASGI with
httpx), over a store holding one AV-PEA adapter of the paper's shape (reduction 8, 10 segments)
with random weights. The clip is synthesised with PyAV (320 x 240 MPEG-4 at 25 fps, PCM sound,
colour and tone changing every few seconds). One untimed request warms up, then each timed
request is reported with the engine's forward time and the featurize time from ``/metrics``;
the load average is printed beside them because the machine may be shared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx
import torch
from asgi_lifespan import LifespanManager

from lookaside.adapters.head import HeadConfig
from lookaside.backbones import build_random
from lookaside.bank import AdapterBank
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.features import FeatureConfig
from service.app import create_app
from service.settings import ServiceSettings
from tests.av_synth import PALETTE, Clip, Second, encode

LABELS = [*(f"event{i}" for i in range(28)), "background"]


def _clip(seconds: int) -> bytes:
    parts = [
        Second(PALETTE[(t // 3) % len(PALETTE)], 300.0 + 200 * (t // 3)) for t in range(seconds)
    ]
    return encode(Clip(parts, fps=25, size=(240, 320)))


def _store(root: Path, preset: str, segments: int) -> None:
    backbone = build_random(preset, seed=0)
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    head = HeadConfig(num_classes=len(LABELS))
    bank.add("x@1", "avpea", {"segments": segments}, head, seed=0)
    ckpt = AdapterCheckpoint.from_bank(
        bank,
        "x@1",
        name="ave",
        version=1,
        task="audio-visual events",
        task_type="multiclass",
        labels=LABELS,
        features=FeatureConfig(target_frames=100),
        backbone=backbone,
    )
    ckpt.save(root / "ave" / "1")
    (root / "ave" / "ACTIVE").write_text("1\n")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return float("nan")


async def _run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        _store(store, args.preset, args.segments)
        settings = ServiceSettings(
            _env_file=None,
            backbone=f"random:{args.preset}:0",
            device=args.device,
            store=store,
            admin_token="bench",
            request_timeout_s=600.0,
            warmup=False,
        )
        video = _clip(args.seconds)
        app = create_app(settings)
        async with (
            LifespanManager(app, startup_timeout=600, shutdown_timeout=600) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app),
                base_url="http://bench",
                timeout=600,
            ) as client,
        ):

            async def once() -> float:
                started = time.perf_counter()
                r = await client.post(
                    "/av-event",
                    files={"video": ("clip.mkv", video, "video/x-matroska")},
                    data={"adapter": "ave"},
                )
                elapsed = time.perf_counter() - started
                r.raise_for_status()
                assert len(r.json()["seconds"]) == args.seconds
                return elapsed

            await once()  # warm-up (lazy init, allocator)
            for i in range(args.requests):
                before = (await client.get("/metrics")).text
                elapsed = await once()
                after = (await client.get("/metrics")).text
                forward = _metric(after, "lookaside_forward_seconds_sum") - _metric(
                    before, "lookaside_forward_seconds_sum"
                )
                feats = _metric(after, "lookaside_featurize_seconds_sum") - _metric(
                    before, "lookaside_featurize_seconds_sum"
                )
                print(  # noqa: T201
                    f"request {i + 1}: {elapsed * 1000:.0f} ms end to end "
                    f"(decode + features {feats * 1000:.0f} ms, model {forward * 1000:.0f} ms) "
                    f"load average {os.getloadavg()[0]:.2f}"
                )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="vit_base_patch16_224", help="random:<preset> backbone")
    p.add_argument("--seconds", type=int, default=10, help="clip length")
    p.add_argument("--segments", type=int, default=10, help="the adapter's window (seconds)")
    p.add_argument("--requests", type=int, default=2, help="timed requests")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = p.parse_args()
    print(  # noqa: T201
        f"/av-event: {args.seconds} s clip, backbone random:{args.preset}, AV-PEA "
        f"(segments {args.segments}), device {args.device}, torch threads "
        f"{torch.get_num_threads()}, CPUs {os.cpu_count()}"
    )
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
