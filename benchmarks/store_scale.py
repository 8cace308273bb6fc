"""Store costs against the store's size, over real HTTP (printed, never asserted).

    python -m benchmarks.store_scale               # ~1 min on 2 cores
    python -m benchmarks.store_scale --uploads 50 --requests 300

One server (``python -m service`` with the tiny random backbone on 127.0.0.1, in its own
process) opens a store written straight into the store's layout beforehand (hard-linked weights,
no fsync: it only has to look like a store that ran for a while):

- ``one``, ``v100``, ``v300``: 1, 100 and 300 versions of one name; ``v200``: 200 versions;
- ``n0000`` ... : enough more names for ``--names`` (default 1,000) in all.

It measures, one request at a time:

1. **upload** (``POST /adapters``, new content, not activated): p50/p99 of ``--uploads`` uploads
   of a new version of ``one``, ``v100`` and ``v300``, and of brand-new names in the 1,000-name
   store;
2. **GET /adapters/{name}** of ``v200`` (200 versions), and a default page of ``GET /adapters``;
3. **/classify** p50/p99 of a 1.28 s clip on an adapter of the 1,000-name store, alone and while a
   second thread scrapes ``GET /metrics`` in a loop (its own p50 printed too).

The issue's numbers before the store index (same shapes, another machine): upload p50 14 ms at 50
versions and 428 ms at 300; ``GET /adapters/{name}`` 500 ms at 200 versions; ``/metrics`` 134 ms
at 1,000 names; /classify p50 12 -> 94 ms (p99 383 ms) with a scraper.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from benchmarks.serve_http import stop_server, wait_ready
from lookaside.adapters.head import HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.backbones import build_random
from lookaside.bank import AdapterBank
from lookaside.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, AdapterCheckpoint
from lookaside.features import FeatureConfig

TOKEN = "benchmark-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHAPES = {"one": 1, "v100": 100, "v200": 200, "v300": 300}


def _upload_bytes(backbone: VisionTransformer) -> tuple[dict[str, object], bytes]:
    """(manifest as a dict, weights bytes) of a small bottleneck adapter for ``backbone``."""
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    bank.add("x@1", "bottleneck", {"rank": 4}, HeadConfig(num_classes=3), seed=0)
    ckpt = AdapterCheckpoint.from_bank(
        bank,
        "x@1",
        name="x",
        version=1,
        task="store scale",
        task_type="multiclass",
        labels=["a", "b", "c"],
        features=FeatureConfig(target_frames=128),
        backbone=backbone,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ckpt.save(Path(tmp) / "a")
        manifest = json.loads((Path(tmp) / "a" / MANIFEST_FILE).read_bytes())
        return manifest, (Path(tmp) / "a" / WEIGHTS_FILE).read_bytes()


def _fill(root: Path, manifest: dict[str, object], weights: bytes, names: int) -> None:
    """The store's layout, written directly (weights hard-linked to one file)."""
    shared = root.parent / "weights.safetensors"
    shared.write_bytes(weights)
    plan = dict(SHAPES)
    for i in range(max(names - len(plan), 0)):
        plan[f"n{i:04d}"] = 1
    for name, versions in plan.items():
        for version in range(1, versions + 1):
            target = root / name / str(version)
            target.mkdir(parents=True)
            body = {**manifest, "name": name, "version": version}
            (target / MANIFEST_FILE).write_text(json.dumps(body))
            os.link(shared, target / WEIGHTS_FILE)
        (root / name / "LAST").write_text(f"{versions}\n")
        (root / name / "ACTIVE").write_text(f"{versions}\n")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _serve(store: Path) -> Iterator[str]:
    """``python -m service`` on ``store`` in its own process (so this process's client threads
    do not share its interpreter lock), until ready; yields its URL."""
    port = _free_port()
    env = {
        **os.environ,
        "LOOKASIDE_BACKBONE": "random:test_vit:1",
        "LOOKASIDE_DEVICE": "cpu",
        "LOOKASIDE_STORE": str(store),
        "LOOKASIDE_ADMIN_TOKEN": TOKEN,
        "LOOKASIDE_PORT": str(port),
        "LOOKASIDE_MAX_RESIDENT_ADAPTERS": "8",
        "LOOKASIDE_MAX_BATCH_SIZE": "8",
        "LOOKASIDE_MAX_WAIT_MS": "1",
        "LOOKASIDE_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, 180)
        yield url
    finally:
        stop_server(proc, kill_wait=10)


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {1000 * statistics.median(ordered):7.1f} ms  p99 {1000 * p99:7.1f} ms"


def _timed(call: Callable[[], httpx.Response], n: int, status: int = 200) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        r = call()
        out.append(time.perf_counter() - start)
        if r.status_code != status:
            raise RuntimeError(f"{r.request.method} {r.request.url}: {r.status_code} {r.text}")
    return out


def _clip() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    sf.write(buf, (0.1 * rng.standard_normal(20_480)).astype(np.float32), 16_000, format="WAV")
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=1000, help="names in the store")
    parser.add_argument("--uploads", type=int, default=30, help="uploads per shape")
    parser.add_argument("--requests", type=int, default=150, help="/classify requests per phase")
    args = parser.parse_args()

    backbone = build_random("test_vit", seed=1)
    manifest, weights = _upload_bytes(backbone)
    counter = iter(range(10**9))

    def upload(client: httpx.Client, name: str) -> httpx.Response:
        body = {**manifest, "name": name, "metrics": {"n": float(next(counter))}}  # new content
        files = {
            "manifest": ("manifest.json", json.dumps(body).encode()),
            "weights": ("adapter.safetensors", weights),
        }
        return client.post("/adapters", files=files, headers=AUTH)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        started = time.perf_counter()
        _fill(root, manifest, weights, args.names)
        print(
            f"store: {args.names} names, versions {SHAPES} ({time.perf_counter() - started:.1f} s)"
        )
        started = time.perf_counter()
        with _serve(root) as url, httpx.Client(base_url=url, timeout=120) as client:
            print(f"server ready in {time.perf_counter() - started:.1f} s (index built at startup)")
            print(f"\nupload (POST /adapters, new version, not activated), {args.uploads} each:")
            for name in ("one", "v100", "v300"):
                taken = _timed(functools.partial(upload, client, name), args.uploads, 201)
                print(f"  {SHAPES[name]:>4} versions of one name   {_ms(taken)}")
            fresh = iter(range(10**9))
            taken = _timed(lambda: upload(client, f"new-{next(fresh)}"), args.uploads, 201)
            print(f"  a new name, {args.names} names     {_ms(taken)}")

            print("\nreads:")
            taken = _timed(lambda: client.get("/adapters/v200"), 20)
            print(f"  GET /adapters/v200 (200 versions)  {_ms(taken)}")
            taken = _timed(lambda: client.get("/adapters"), 20)
            print(f"  GET /adapters (a page of 100)      {_ms(taken)}")
            taken = _timed(lambda: client.get("/metrics"), 50)
            print(f"  GET /metrics ({args.names} names)      {_ms(taken)}")

            clip = _clip()

            def classify() -> httpx.Response:
                files = {"file": ("clip.wav", clip)}
                return client.post("/classify", files=files, data={"adapter": "n0100"})

            _timed(classify, 10)  # load the adapter, warm the grid
            print(f"\n/classify (1.28 s clip, tiny backbone), {args.requests} sequential requests:")
            alone = _timed(classify, args.requests)
            print(f"  alone                              {_ms(alone)}")
            stop = threading.Event()
            scrapes: list[float] = []

            def scrape() -> None:
                with httpx.Client(base_url=url, timeout=120) as scraper:
                    while not stop.is_set():
                        scrapes.extend(_timed(lambda: scraper.get("/metrics"), 1))

            thread = threading.Thread(target=scrape, daemon=True)
            thread.start()
            try:
                busy = _timed(classify, args.requests)
            finally:
                stop.set()
                thread.join(timeout=60)
            print(f"  with a /metrics scraper            {_ms(busy)}")
            print(f"  (the scraper's {len(scrapes)} scrapes:     {_ms(scrapes)})")


if __name__ == "__main__":
    main()
