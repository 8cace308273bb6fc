"""The service over HTTP: served clips/s against the backbone-only ceiling, latency, mixing on/off,
and upload-to-servable latency (printed, never asserted).

    python -m benchmarks.serve_http --preset tiny      # tiny backbone, seconds
    python -m benchmarks.serve_http --preset vit-b     # ViT-B/16, 5 s clips (minutes on a CPU)
    python -m benchmarks.serve_http --preset vit-b --engine onnxruntime --ort-precision int8

In one run, this process (the client) starts ``python -m service`` as a separate process on
127.0.0.1 with a fresh store holding 8 adapters of 8 different methods, and measures:

1. **ceiling**: the backbone alone (``MultiAdapterModel`` with no adapter routed), batches of
   ``max_batch_size`` rows, in this process while no server runs (same dtype and threads),
   before and after the servers (the mean is used; the two show the machine's drift);
2. **mixed, mixing=on**: a stream of requests round-robin over the 8 adapters at a fixed
   concurrency; served clips/s, its ratio to the ceiling, p50/p99 latency;
3. **mixed, mixing=off**: the same stream against a server that serves one adapter per batch;
   the ratio on/off;
4. **upload-to-servable**: with the mixing=on server idle, ``POST /adapters?activate=true`` of a
   new 2 % LoAA adapter (rank 36 on ViT-B, attention sites, time kernel) until the answer (the
   registry loads the version before the pointer flips, so the answer means servable); each is
   then checked with a request naming that version. p50/p99 over the uploads.

With the stream round-robin over 8 adapters at concurrency <= 8, every request in flight names a
different adapter, so ``mixing=off`` runs batches of one row while ``mixing=on`` fills them; the
on/off ratio therefore measures what batching buys on the device. On a CPU, ViT-B's throughput
barely depends on the batch size, so expect a ratio near 1 there; the gain is a GPU effect.

Weights are random (speed does not depend on their values). Both servers and the ceiling use the
same torch thread count (``--threads``, default: all cores).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf
import torch

from lookaside.adapters.head import HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.backbones import build_random
from lookaside.bank import AdapterBank
from lookaside.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, AdapterCheckpoint
from lookaside.features import FeatureConfig
from lookaside.model import MultiAdapterModel

TOKEN = "benchmark-admin-token"


@dataclass(frozen=True)
class Preset:
    backbone: str
    frames: int
    clip_s: float
    methods: list[tuple[str, dict[str, Any]]]
    loaa_2pct: dict[str, Any]
    requests: int
    concurrency: int
    batch: int
    uploads: int


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        backbone="test_vit",
        frames=128,
        clip_s=1.28,
        methods=[
            ("linear", {}),
            ("bottleneck", {"rank": 8}),
            ("lora", {"rank": 4, "alpha": 8.0}),
            ("convpass", {"rank": 4}),
            ("loaa", {"rank": 4, "kernels": {"attn": "T"}}),
            ("dense_moa", {"num_experts": 4, "rank": 1}),
            ("soft_moa", {"num_experts": 4, "rank": 1}),
            ("aat", {"rank": 8}),
        ],
        loaa_2pct={"rank": 4, "kernels": {"attn": "T"}},
        requests=96,
        concurrency=16,
        batch=8,
        uploads=10,
    ),
    "vit-b": Preset(
        backbone="vit_base_patch16",
        frames=512,
        clip_s=5.0,
        methods=[
            ("linear", {}),
            ("bottleneck", {"rank": 108, "sites": ["attn", "ffn"]}),
            ("lora", {"rank": 8}),
            ("convpass", {"rank": 8}),
            ("loaa", {"rank": 36, "kernels": {"attn": "T"}}),
            ("dense_moa", {"num_experts": 14, "rank": 1}),
            ("soft_moa", {"num_experts": 14, "rank": 1}),
            ("aat", {"rank": 64}),
        ],
        loaa_2pct={"rank": 36, "kernels": {"attn": "T"}},
        requests=48,
        concurrency=16,
        batch=8,
        uploads=10,
    ),
}
LABELS = [f"class{i}" for i in range(10)]


def _checkpoint(
    backbone: VisionTransformer,
    name: str,
    method: str,
    config: dict[str, Any],
    frames: int,
    seed: int,
) -> tuple[bytes, bytes]:
    """(manifest.json, adapter.safetensors) of an adapter with random weights."""
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    bank.add("x@1", method, config, HeadConfig(num_classes=len(LABELS)), seed=seed)
    ckpt = AdapterCheckpoint.from_bank(
        bank,
        "x@1",
        name=name,
        version=1,
        task="benchmark",
        task_type="multiclass",
        labels=LABELS,
        features=FeatureConfig(target_frames=frames),
        backbone=backbone,
    )
    gen = torch.Generator().manual_seed(seed)
    ckpt.tensors = {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in ckpt.tensors.items()}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt.save(Path(tmp) / "a")
        return (Path(tmp) / "a" / MANIFEST_FILE).read_bytes(), (
            Path(tmp) / "a" / WEIGHTS_FILE
        ).read_bytes()


def _clip(seconds: float) -> bytes:
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, samples, 16_000, format="WAV")
    return buf.getvalue()


def _ceiling(
    backbone: VisionTransformer, preset: Preset, dtype: str, seconds: float = 3.0
) -> float:
    """Backbone-only clips/s at the server's batch size (no adapter routed)."""
    model = MultiAdapterModel(backbone, AdapterBank.for_backbone(backbone, capacity=1)).eval()
    spec = torch.randn(preset.batch, preset.frames, 128)
    ids: list[str | None] = [None] * preset.batch
    compute = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    with torch.inference_mode(), torch.autocast("cpu", dtype=compute, enabled=dtype != "fp32"):
        model(spec, ids)  # warm-up
        runs = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or runs < 2:
            model(spec, ids)
            runs += 1
        elapsed = time.perf_counter() - start
    return runs * preset.batch / elapsed


def metric_sum(text: str, prefix: str) -> float:
    """Sum of the samples in a Prometheus exposition ``text`` whose line starts with ``prefix``
    (a metric name, or a name and ``{`` for its labelled samples only)."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    """Until ``GET /readyz`` at ``url`` answers 200; fails if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not become ready")


def stop_server(proc: subprocess.Popen[bytes], kill_wait: float = 30) -> None:
    """SIGTERM (the server drains), then SIGKILL if it has not exited within 60 s."""
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(kill_wait)


class Server:
    """``python -m service`` in its own process."""

    def __init__(
        self,
        store: Path,
        preset: Preset,
        *,
        mixing: str,
        dtype: str,
        threads: int,
        engine: dict[str, str] | None = None,
    ) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "LOOKASIDE_BACKBONE": f"random:{preset.backbone}",
            "LOOKASIDE_DEVICE": "cpu",
            "LOOKASIDE_DTYPE": dtype,
            "LOOKASIDE_STORE": str(store),
            "LOOKASIDE_ADMIN_TOKEN": TOKEN,
            "LOOKASIDE_PORT": str(self.port),
            "LOOKASIDE_MIXING": mixing,
            "LOOKASIDE_MAX_BATCH_SIZE": str(preset.batch),
            "LOOKASIDE_MAX_WAIT_MS": "10",
            "LOOKASIDE_REQUEST_TIMEOUT_S": "600",
            "LOOKASIDE_LOG_LEVEL": "warning",
            "OMP_NUM_THREADS": str(threads),
            **(engine or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 600) -> None:
        wait_ready(self.proc, self.url, timeout)

    def wait_graphs(self, timeout: float = 1800) -> None:
        """engine=onnxruntime: wait until the startup graph is built (batches run eager PyTorch
        until then, which is not what this benchmark measures)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = httpx.get(f"{self.url}/metrics", timeout=10).text
            ready = metric_sum(text, "lookaside_onnx_graphs_total{")
            if ready >= 1 and "lookaside_onnx_graphs_building 0.0" in text:
                return
            time.sleep(2)
        raise RuntimeError("the ONNX Runtime graph was not built in time")

    def stop(self) -> None:
        stop_server(self.proc)


async def _stream(
    url: str, names: list[str], clip: bytes, n: int, concurrency: int
) -> dict[str, float]:
    """``n`` requests round-robin over ``names`` at ``concurrency``: clips/s, p50/p99 (ms)."""
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal errors
        async with sem:
            start = time.perf_counter()
            r = await client.post(
                f"{url}/classify?adapter={names[i % len(names)]}",
                content=clip,
                headers={"Content-Type": "audio/wav"},
            )
            latencies.append(time.perf_counter() - start)
            errors += r.status_code != 200

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*[one(client, i) for i in range(min(concurrency, n))])  # warm-up
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*[one(client, i) for i in range(n)])
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "clips_per_s": n / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": float(errors),
    }


def _upload_latency(url: str, uploads: list[tuple[bytes, bytes]], clip: bytes) -> dict[str, float]:
    times = []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(timeout=600) as client:
        for manifest, weights in uploads:
            start = time.perf_counter()
            r = client.post(
                f"{url}/adapters?activate=true",
                files={
                    "manifest": ("manifest.json", manifest),
                    "weights": ("a.safetensors", weights),
                },
                headers=auth,
            )
            times.append(time.perf_counter() - start)
            r.raise_for_status()
            version = r.json()["version"]
            check = client.post(
                f"{url}/classify?adapter=fresh@{version}",
                content=clip,
                headers={"Content-Type": "audio/wav"},
            )
            check.raise_for_status()
    times.sort()
    return {
        "p50_ms": 1000 * times[len(times) // 2],
        "p99_ms": 1000 * times[min(len(times) - 1, int(0.99 * len(times)))],
        "kb": len(uploads[0][1]) / 1024,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--requests", type=int, default=None, help="requests per stream")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--engine", choices=["torch", "onnxruntime"], default="torch")
    parser.add_argument("--ort-precision", choices=["fp32", "int8"], default="fp32")
    parser.add_argument(
        "--ort-cache", default=".lookaside-cache/onnx", help="graph cache (reused across runs)"
    )
    args = parser.parse_args(argv)
    engine = {
        "LOOKASIDE_ENGINE": args.engine,
        "LOOKASIDE_ORT_PRECISION": args.ort_precision,
        "LOOKASIDE_ORT_CACHE": str(Path(args.ort_cache).resolve()),
    }
    preset = PRESETS[args.preset]
    n = args.requests or preset.requests
    concurrency = args.concurrency or preset.concurrency
    torch.set_num_threads(args.threads)

    backbone = build_random(preset.backbone)
    clip = _clip(preset.clip_s)
    results: dict[str, Any] = {
        "preset": args.preset,
        "dtype": args.dtype,
        "threads": args.threads,
        "engine": args.engine if args.engine == "torch" else f"onnxruntime {args.ort_precision}",
    }
    before = _ceiling(backbone, preset, args.dtype)
    print(f"backbone-only ceiling: {before:.2f} clips/s (batch {preset.batch})")

    fresh = [
        _checkpoint(backbone, "fresh", "loaa", preset.loaa_2pct, preset.frames, 100 + i)
        for i in range(preset.uploads)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        store = Path(tmp) / "store"
        for i, (method, config) in enumerate(preset.methods):
            name = f"m{i}-{method.replace('_', '-')}"
            manifest, weights = _checkpoint(backbone, name, method, config, preset.frames, i)
            names.append(name)
            _write(store, name, manifest, weights)
        ceiling = before
        for mixing in ("on", "off"):
            server = Server(
                store, preset, mixing=mixing, dtype=args.dtype, threads=args.threads, engine=engine
            )
            try:
                server.wait_ready()
                if args.engine == "onnxruntime":
                    server.wait_graphs()
                stats = asyncio.run(_stream(server.url, names, clip, n, concurrency))
                results[f"mixing_{mixing}"] = stats
                print(
                    f"mixing={mixing}: {stats['clips_per_s']:.2f} clips/s "
                    f"({stats['clips_per_s'] / ceiling:.2f} of the ceiling), "
                    f"p50 {stats['p50_ms']:.0f} ms, p99 {stats['p99_ms']:.0f} ms, "
                    f"errors {stats['errors']:.0f}"
                )
                if mixing == "on":
                    up = _upload_latency(server.url, fresh, clip)
                    results["upload_to_servable"] = up
                    print(
                        f"upload-to-servable ({up['kb']:.0f} kB LoAA): p50 {up['p50_ms']:.0f} ms, "
                        f"p99 {up['p99_ms']:.0f} ms over {len(fresh)} uploads"
                    )
            finally:
                server.stop()
    # measured again after the servers stopped: the machine's drift shows as the gap between the two
    after = _ceiling(backbone, preset, args.dtype)
    ceiling = (before + after) / 2
    results["ceiling_clips_per_s"] = ceiling
    results["ceiling_before_after"] = [before, after]
    print(f"backbone-only ceiling again: {after:.2f} clips/s; using the mean {ceiling:.2f}")
    on, off = results["mixing_on"]["clips_per_s"], results["mixing_off"]["clips_per_s"]
    results["ratio_to_ceiling"] = on / ceiling
    results["ratio_on_off"] = on / off
    print(
        f"served/ceiling {results['ratio_to_ceiling']:.2f} (goal >= 0.90); "
        f"mixing on/off {results['ratio_on_off']:.2f} (goal >= 1.3)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def _write(store: Path, name: str, manifest: bytes, weights: bytes) -> None:
    """An adapter at version 1, active (the store's layout; the server validates it at start)."""
    version = store / name / "1"
    version.mkdir(parents=True)
    (version / MANIFEST_FILE).write_bytes(manifest)
    (version / WEIGHTS_FILE).write_bytes(weights)
    (store / name / "ACTIVE").write_text("1\n")
    (store / name / "LAST").write_text("1\n")


if __name__ == "__main__":
    main()
