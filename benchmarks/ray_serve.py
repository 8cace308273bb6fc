"""Lookaside on Ray Serve against one process: affinity, swap propagation, the Ray path's cost.

    python -m benchmarks.ray_serve                  # tiny backbone, a local Ray instance, minutes
    python -m benchmarks.ray_serve --json out.json

On a machine with few cores, replicas cannot add throughput (they share the cores); what this
measures is what can be, in one run (printed, never asserted):

1. **affinity** under skewed traffic: ``--adapters`` adapters, popularity Zipf(``--zipf``), the
   same seeded request sequence against 2 model replicas holding ``K`` adapters each (for each
   ``--slots`` K) and against one process holding ``2K``: adapter loads (per adapter requested)
   and the residency hit rate ``1 - loads / calls``. Without affinity a popular adapter would be
   loaded on every replica; with it, loads approach one process's with the same total slots.
2. **swap propagation** with 2 ingress replicas: after each of ``--swaps`` activations returns,
   requests run back to back until 10 in a row name the new version; the staleness is the time
   from the activation's answer to the last request sent that still got the old version (0 when
   none). With one ingress it is 0 by construction (the ingress that flips also resolves).
3. **the Ray path's cost**: the same stream (8 adapters, round-robin) at concurrency 1 and 8
   against 2 replicas and against one process, in alternating rounds: p50/p99 latency and
   requests/s; and the ingress's mean call time to a replica (``lookaside_replica_call_seconds``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ray
from ray import serve

from benchmarks.serve_http import PRESETS, TOKEN, Server, _checkpoint, _clip, _stream, metric_sum
from lookaside.backbones import build_random
from service.ray.app import build_application
from service.ray.proxy import proxy_environment
from service.ray.wire import APP_NAME
from service.settings import ServiceSettings
from service.store import AdapterStore

AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAV = {"Content-Type": "audio/wav"}


def _per_adapter(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for adapter, value in re.findall(rf'^{name}\{{adapter="([^"]+)"[^}}]*\}} (\S+)$', text, re.M):
        out[adapter] = out.get(adapter, 0.0) + float(value)
    return out


def _zipf_sequence(adapters: int, n: int, s: float, seed: int = 0) -> list[str]:
    ranks = np.arange(1, adapters + 1, dtype=np.float64)
    p = ranks**-s / np.sum(ranks**-s)
    picks = np.random.default_rng(seed).choice(adapters, size=n, p=p)
    return [f"z{int(i)}" for i in picks]


async def _send(url: str, refs: list[str], clip: bytes, concurrency: int) -> int:
    """Every ref once, ``concurrency`` at a time; returns the errors."""
    sem = asyncio.Semaphore(concurrency)
    errors = 0

    async def one(client: httpx.AsyncClient, ref: str) -> None:
        nonlocal errors
        async with sem:
            r = await client.post(
                f"{url}/classify", params={"adapter": ref}, content=clip, headers=WAV
            )
            errors += r.status_code != 200

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*[one(client, ref) for ref in refs])
    return errors


class Cluster:
    """A local Ray instance with Serve's proxy on a free port."""

    def __init__(self, store: Path, batch: int) -> None:
        self.batch = batch
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.store = store
        # as lookaside-serve --ray: the proxy runs the body limits (service/ray/proxy.py)
        limits = ServiceSettings(_env_file=None, allow_no_admin_token=True)
        os.environ.update(proxy_environment(limits))
        ray.init(num_cpus=8, include_dashboard=False, logging_level=logging.WARNING)
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})

    def deploy(self, **overrides: Any) -> None:
        cfg = ServiceSettings(
            _env_file=None,
            backbone="random:test_vit",
            device="cpu",
            store=self.store,
            admin_token=TOKEN,
            ray=True,
            ray_replicas=2,
            max_wait_ms=10.0,
            log_level="warning",
            request_timeout_s=600.0,
            max_batch_size=self.batch,
            metrics_max_age_s=0.0,  # before/after snapshots must not share one cached render
            **overrides,
        )
        serve.run(build_application(cfg), name=APP_NAME, route_prefix="/")

    def close(self) -> None:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


def affinity(
    cluster: Cluster, clip: bytes, args: argparse.Namespace, preset: Any
) -> list[dict[str, Any]]:
    refs = _zipf_sequence(args.adapters, args.requests, args.zipf)
    rows = []
    for slots in args.slots:
        cluster.deploy(ray_adapters_per_replica=slots)
        errors = asyncio.run(_send(cluster.url, refs, clip, args.concurrency))
        text = httpx.get(f"{cluster.url}/metrics", timeout=30).text
        loads = _per_adapter(text, "lookaside_replica_adapter_loads_total")
        calls = metric_sum(text, "lookaside_replica_calls_total{")
        server = Server(
            cluster.store,
            preset,
            mixing="on",
            dtype="fp32",
            threads=1,
            engine={
                "LOOKASIDE_MAX_RESIDENT_ADAPTERS": str(2 * slots),
                "LOOKASIDE_BANK_CAPACITY": "64",
            },
        )
        try:
            server.wait_ready()
            one_errors = asyncio.run(_send(server.url, refs, clip, args.concurrency))
            one_text = httpx.get(f"{server.url}/metrics", timeout=30).text
        finally:
            server.stop()
        one_loads = metric_sum(one_text, "lookaside_adapter_load_seconds_count")
        requested = len(set(refs))
        row = {
            "slots_per_replica": slots,
            "adapters_requested": requested,
            "ray_loads": sum(loads.values()),
            "ray_loads_per_adapter": sum(loads.values()) / requested,
            "ray_max_loads_one_adapter": max(loads.values()),
            "ray_hit_rate": 1 - sum(loads.values()) / max(calls, 1),
            "one_process_slots": 2 * slots,
            "one_process_loads": one_loads,
            "one_process_hit_rate": 1 - one_loads / len(refs),
            "errors": errors + one_errors,
        }
        print(json.dumps(row), flush=True)  # noqa: T201
        rows.append(row)
    return rows


def swaps(cluster: Cluster, clip: bytes, args: argparse.Namespace) -> dict[str, Any]:
    cluster.deploy(ray_adapters_per_replica=8, ray_ingress_replicas=2, ray_sync_s=args.sync_s)
    staleness: list[float] = []
    with httpx.Client(timeout=600) as client:
        for step in range(args.swaps):
            version = 1 + (step + 1) % 2
            r = client.post(
                f"{cluster.url}/adapters/z0/activate", json={"version": version}, headers=AUTH
            )
            r.raise_for_status()
            done = time.monotonic()
            last_old, streak = done, 0
            stale = False
            while streak < 10:
                sent = time.monotonic()
                r = client.post(
                    f"{cluster.url}/classify", params={"adapter": "z0"}, content=clip, headers=WAV
                )
                got = r.json()["results"][0]["version"]
                if got == version:
                    streak += 1
                else:
                    streak, last_old, stale = 0, sent, True
            staleness.append(last_old - done if stale else 0.0)
    staleness.sort()
    out = {
        "swaps": len(staleness),
        "ingress_replicas": 2,
        "sync_s": args.sync_s,
        "stale_p50_ms": 1000 * staleness[len(staleness) // 2],
        "stale_p99_ms": 1000 * staleness[min(len(staleness) - 1, int(0.99 * len(staleness)))],
        "stale_max_ms": 1000 * staleness[-1],
        "swaps_with_a_stale_answer": sum(s > 0 for s in staleness),
    }
    print(json.dumps(out), flush=True)  # noqa: T201
    return out


ROLES = {
    "ingress": "LookasideIngress",
    "replicas": "LookasideModel",
    "proxy": "ProxyActor",
    "controller": "ServeController",
    "raylet": "raylet",
    "gcs": "gcs_server",
}
"""Ray's processes by role, found by their process titles (``ray::ServeReplica:...``)."""


def _cpu_by_role() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each role's processes."""
    import psutil

    out = dict.fromkeys(ROLES, 0.0)
    for proc in psutil.process_iter(["cmdline", "name"]):
        text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["name"] or "")
        role = next((r for r, needle in ROLES.items() if needle in text), None)
        if role is not None:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                out[role] += times.user + times.system
    return out


def _cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def overhead(
    cluster: Cluster, clip: bytes, args: argparse.Namespace, preset: Any
) -> list[dict[str, Any]]:
    """Alternating rounds against 2 replicas and one process; latency, clips/s, the mean
    ingress-to-replica call, and CPU milliseconds per request by process role."""
    names = [f"z{i}" for i in range(8)]
    cluster.deploy(ray_adapters_per_replica=8)
    server = Server(cluster.store, preset, mixing="on", dtype="fp32", threads=1)
    server.wait_ready()
    rows = []
    try:
        for concurrency in (1, 8):
            results: dict[str, list[dict[str, float]]] = {"ray": [], "one_process": []}
            cpu = dict.fromkeys([*ROLES, "one_process"], 0.0)
            calls = [0.0, 0.0]
            for _ in range(args.rounds):
                text = httpx.get(f"{cluster.url}/metrics", timeout=30).text
                before = _cpu_by_role()
                calls[0] -= metric_sum(text, "lookaside_replica_call_seconds_sum")
                calls[1] -= metric_sum(text, "lookaside_replica_call_seconds_count")
                results["ray"].append(
                    asyncio.run(_stream(cluster.url, names, clip, args.stream, concurrency))
                )
                after = _cpu_by_role()
                text = httpx.get(f"{cluster.url}/metrics", timeout=30).text
                calls[0] += metric_sum(text, "lookaside_replica_call_seconds_sum")
                calls[1] += metric_sum(text, "lookaside_replica_call_seconds_count")
                for role in ROLES:
                    cpu[role] += after[role] - before[role]
                start = _cpu_s(server.proc.pid)
                results["one_process"].append(
                    asyncio.run(_stream(server.url, names, clip, args.stream, concurrency))
                )
                cpu["one_process"] += _cpu_s(server.proc.pid) - start
            row: dict[str, Any] = {
                "concurrency": concurrency,
                "ray_mean_call_ms": 1000 * calls[0] / max(calls[1], 1),
            }
            for kind, runs in results.items():
                for key in ("clips_per_s", "p50_ms", "p99_ms"):
                    row[f"{kind}_{key}"] = statistics.median(r[key] for r in runs)
                row[f"{kind}_errors"] = sum(r["errors"] for r in runs)
            row["extra_p50_ms"] = row["ray_p50_ms"] - row["one_process_p50_ms"]
            requests = args.rounds * args.stream
            row["cpu_ms_per_request"] = {k: 1000 * v / requests for k, v in cpu.items()}
            print(json.dumps(row), flush=True)  # noqa: T201
            rows.append(row)
    finally:
        server.stop()
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", type=int, default=32)
    parser.add_argument("--requests", type=int, default=400, help="requests per affinity run")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--slots", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--sync-s", type=float, default=0.5)
    parser.add_argument("--stream", type=int, default=200, help="requests per latency round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    preset = PRESETS["tiny"]
    clip = _clip(preset.clip_s)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        store = AdapterStore(root)
        backbone = build_random("test_vit")
        for i in range(args.adapters):
            manifest, weights = _checkpoint(
                backbone, f"z{i}", "bottleneck", {"rank": 8}, preset.frames, seed=i
            )
            store.put(manifest, weights, backbone=backbone, activate=True)
        manifest, weights = _checkpoint(
            backbone, "z0", "bottleneck", {"rank": 8}, preset.frames, seed=999
        )
        store.put(manifest, weights, backbone=backbone)  # z0@2, for the swaps
        cluster = Cluster(root, preset.batch)
        try:
            report = {
                "affinity": affinity(cluster, clip, args, preset),
                "swaps": swaps(cluster, clip, args),
                "overhead": overhead(cluster, clip, args, preset),
            }
        finally:
            cluster.close()
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
