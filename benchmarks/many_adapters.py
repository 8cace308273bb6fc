"""Many adapters per server: Zipf traffic over thousands of adapters against uniform traffic over
8 (issue 21; printed, never asserted).

    python -m benchmarks.many_adapters          # tiny backbone, 10,000 adapters (~2.5 min, 2 cores)
    python -m benchmarks.many_adapters --backbone random:vit_base_patch16 --adapters 2000 \\
        --requests 200 --concurrency 8 --rounds 3  # ViT-B, LoRA r=8 (1.2 MB each)

This process (the client) writes a store of ``--adapters`` LoRA r=8 adapters straight into the
store's layout (one random checkpoint whose weights are hard-linked under every name: speed does
not depend on their values, and 10,000 names take seconds), starts ``python -m service`` on it in
its own process with default settings (``--server-env KEY=VALUE`` changes one), and sends
interleaved rounds, each of ``--requests`` requests kept ``--concurrency`` in flight through
``POST /classify`` (one generated clip):

- ``uniform``: drawn uniformly over the 8 most popular adapters;
- ``zipf``: drawn from Zipf(s=1.1) over all of them. Popularity ranks are shuffled over the names
  with a fixed seed, so the startup preload (which takes names in sorted order) is no hint. With
  ``--seed`` s, round k's ranks are ``cache_policy.zipf_ids(n, requests, 1.1, s + k)``: the cold
  round replays the same trace as ``benchmarks.cache_policy``'s ``zipf-cold`` at that seed.

Before the first round, a warm-up (round-robin over the 8, not measured) loads them. Per round:
clips/s, p50/p99 latency, errors, distinct adapters; from ``GET /metrics`` before and after it:
adapter loads (and loads/s), load seconds, evictions, the resident count, the device and host
tiers' hit rates and loads from each (``lookaside_adapter_tier_*``), rows per batch, forward and
queue-wait means; the server's RSS. Per round pair: zipf/uniform of clips/s and of p99.
The first Zipf round is cold (about a third of its requests name an adapter for the first time:
no cache helps there) and is reported apart; the median ratios are over the later rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.cache_policy import ZIPF_S, zipf_ids
from benchmarks.serve_http import _checkpoint, _clip, metric_sum, stop_server, wait_ready
from lookaside.backbones import load_backbone
from lookaside.checkpoint import MANIFEST_FILE, WEIGHTS_FILE

TOKEN = "benchmark-admin-token"
HOT = 8  # adapters of the uniform traffic
METHOD = ("lora", {"rank": 8})
COUNTERS = {
    "loads": "lookaside_adapter_load_seconds_count{",
    "load_s": "lookaside_adapter_load_seconds_sum{",
    "evictions": "lookaside_adapter_evictions_total{",
    "host_loads": 'lookaside_adapter_load_seconds_count{tier="host"}',
    "host_load_s": 'lookaside_adapter_load_seconds_sum{tier="host"}',
    "disk_loads": 'lookaside_adapter_load_seconds_count{tier="disk"}',
    "disk_load_s": 'lookaside_adapter_load_seconds_sum{tier="disk"}',
    "device_hits": 'lookaside_adapter_tier_hits_total{tier="device"}',
    "device_misses": 'lookaside_adapter_tier_misses_total{tier="device"}',
    "host_hits": 'lookaside_adapter_tier_hits_total{tier="host"}',
    "host_misses": 'lookaside_adapter_tier_misses_total{tier="host"}',
    "batches": "lookaside_batch_rows_count ",
    "batch_rows": "lookaside_batch_rows_sum ",
    "forward_s": "lookaside_forward_seconds_sum ",
    "queue_wait_s": "lookaside_queue_wait_seconds_sum ",
    "queue_waits": "lookaside_queue_wait_seconds_count ",
}


def adapter_names(n: int) -> list[str]:
    """``a00000`` ... (sorted order = index order)."""
    width = len(str(max(n - 1, 0)))
    return [f"a{i:0{width}d}" for i in range(n)]


def popularity(n: int, seed: int) -> list[int]:
    """Adapter index of each popularity rank (rank 0 the most popular): a seeded shuffle."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def zipf_trace(order: Sequence[int], count: int, seed: int) -> list[int]:
    """``count`` adapter indices drawn from Zipf(1.1) over the ranks of ``order``."""
    return [order[int(z[1:])] for z in zipf_ids(len(order), count, ZIPF_S, seed)]


def uniform_trace(order: Sequence[int], count: int, seed: int) -> list[int]:
    """``count`` adapter indices drawn uniformly over the ``HOT`` most popular."""
    rng = random.Random(seed)
    hot = order[:HOT]
    return [hot[rng.randrange(len(hot))] for _ in range(count)]


def round_seeds(seed: int, k: int) -> dict[str, int]:
    """The trace seeds of round ``k`` (0-based) per traffic kind."""
    return {"uniform": seed + 1000 + k, "zipf": seed + k}


def write_store(root: Path, names: Sequence[str], manifest: dict[str, Any], weights: bytes) -> None:
    """The store's layout, version 1 of each name active, written directly (no fsync; the weights
    hard-linked to one file): a store that only has to look like one that ran for a while."""
    root.mkdir(parents=True)
    shared = root.parent / "shared.safetensors"
    shared.write_bytes(weights)
    for name in names:
        version = root / name / "1"
        version.mkdir(parents=True)
        (version / MANIFEST_FILE).write_text(json.dumps({**manifest, "name": name, "version": 1}))
        os.link(shared, version / WEIGHTS_FILE)
        (root / name / "ACTIVE").write_text("1\n")
        (root / name / "LAST").write_text("1\n")


@dataclass(frozen=True)
class Served:
    url: str
    pid: int


@contextmanager
def serve(store: Path, backbone: str, env: dict[str, str], timeout: float) -> Iterator[Served]:
    """``python -m service`` on ``store`` in its own process (so the client's event loop does not
    share its interpreter lock) until ready; default settings but for ``env``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    full = {
        **os.environ,
        "LOOKASIDE_BACKBONE": backbone,
        "LOOKASIDE_DEVICE": "cpu",
        "LOOKASIDE_STORE": str(store),
        "LOOKASIDE_ADMIN_TOKEN": TOKEN,
        "LOOKASIDE_PORT": str(port),
        "LOOKASIDE_LOG_LEVEL": "warning",
        "LOOKASIDE_METRICS_MAX_AGE_S": "0",  # every scrape between rounds renders afresh
        **env,
    }
    cmd = [sys.executable, "-m", "service"]
    proc = subprocess.Popen(cmd, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, timeout)
        yield Served(url, proc.pid)
    finally:
        stop_server(proc)


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` (Linux ``/proc``; None elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def scrape(url: str) -> dict[str, float]:
    """The adapter counters, the resident count and every ``lookaside_adapter_tier*`` sample."""
    text = httpx.get(f"{url}/metrics", timeout=120).raise_for_status().text
    out = {key: metric_sum(text, prefix) for key, prefix in COUNTERS.items()}
    out["resident"] = metric_sum(text, "lookaside_adapters_resident ")
    for line in text.splitlines():
        if line.startswith("lookaside_adapter_tier") and "_created" not in line:
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counter deltas over a round; gauges (the resident count, tier gauges) as at its end."""
    out: dict[str, float] = {}
    for key, value in after.items():
        counter = key in COUNTERS or key.split("{")[0].endswith(("_total", "_count", "_sum"))
        out[key] = value - before.get(key, 0.0) if counter else value
    return out


async def _traffic(
    url: str, names: Sequence[str], clip: bytes, concurrency: int, timeout: float
) -> dict[str, Any]:
    """``names`` in order, ``concurrency`` requests in flight: clips/s, p50/p99 ms, errors."""
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    queue = iter(names)  # shared by the workers (one event loop: no lock needed)

    async def worker(client: httpx.AsyncClient) -> None:
        for name in queue:
            start = time.perf_counter()
            try:
                r = await client.post(
                    f"{url}/classify?adapter={name}",
                    content=clip,
                    headers={"Content-Type": "audio/wav"},
                )
                failure = None if r.status_code == 200 else str(r.status_code)
            except httpx.HTTPError as exc:
                failure = type(exc).__name__
            latencies.append(time.perf_counter() - start)
            if failure is not None:
                failures[failure] += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    errors = sum(failures.values())
    return {
        "requests": len(names),
        "seconds": elapsed,
        "clips_per_s": (len(names) - errors) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": errors,
        "failures": dict(failures),
    }


def run_rounds(server: Served, args: argparse.Namespace, clip: bytes) -> list[dict[str, Any]]:
    """Warm-up, then ``args.rounds`` pairs of (uniform, zipf) rounds."""
    names = adapter_names(args.adapters)
    order = popularity(args.adapters, args.seed)
    hot = [names[i] for i in order[:HOT]]
    warmup = [hot[i % len(hot)] for i in range(max(2 * args.concurrency, 2 * len(hot)))]
    asyncio.run(_traffic(server.url, warmup, clip, args.concurrency, args.timeout))
    rows: list[dict[str, Any]] = []
    before = scrape(server.url)
    for k in range(args.rounds):
        seeds = round_seeds(args.seed, k)
        for kind, make in (("uniform", uniform_trace), ("zipf", zipf_trace)):
            trace = [names[i] for i in make(order, args.requests, seeds[kind])]
            stats = asyncio.run(_traffic(server.url, trace, clip, args.concurrency, args.timeout))
            after = scrape(server.url)
            row = {"round": k + 1, "traffic": kind, "distinct": len(set(trace)), **stats}
            row.update(deltas(before, after))
            row["loads_per_s"] = row["loads"] / stats["seconds"]
            row["device_hit"] = _rate(row["device_hits"], row["device_misses"])
            row["host_hit"] = _rate(row["host_hits"], row["host_misses"])
            row["rows_per_batch"] = row["batch_rows"] / max(row["batches"], 1)
            row["forward_ms"] = 1000 * row["forward_s"] / max(row["batches"], 1)
            row["queue_wait_ms"] = 1000 * row["queue_wait_s"] / max(row["queue_waits"], 1)
            row["rss_mb"] = rss_mb(server.pid)
            rows.append(row)
            before = after
            print(_row_line(row), flush=True)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round pair: zipf/uniform clips/s and p99; the cold pair apart, medians of the rest."""
    pairs = []
    for u, z in zip(rows[0::2], rows[1::2], strict=True):
        pairs.append(
            {
                "round": z["round"],
                "ratio": z["clips_per_s"] / u["clips_per_s"],
                "p99_ratio": z["p99_ms"] / u["p99_ms"],
            }
        )
    warm = pairs[1:]
    return {
        "pairs": pairs,
        "cold": {**pairs[0], "zipf": rows[1]},
        "median_ratio": statistics.median(p["ratio"] for p in warm) if warm else None,
        "median_p99_ratio": statistics.median(p["p99_ratio"] for p in warm) if warm else None,
        "errors": sum(r["errors"] for r in rows),
    }


HEADER = (
    "| round | traffic | clips/s | p50 ms | p99 ms | errors | distinct | device hit | host hit "
    "| loads host/disk | ms/load host/disk | loads/s | evictions | rows/batch | forward ms "
    "| queue wait ms | RSS MB |\n" + "|---" * 17 + "|"
)


def _rate(hits: float, misses: float) -> float | None:
    """Hits over lookups, or None when there were none."""
    return hits / (hits + misses) if hits + misses else None


def _per_load_ms(seconds: float, loads: float) -> str:
    return f"{1000 * seconds / loads:.1f}" if loads else "-"


def _row_line(r: dict[str, Any]) -> str:
    rss = "-" if r["rss_mb"] is None else f"{r['rss_mb']:.0f}"
    hits = ["-" if v is None else f"{100 * v:.0f} %" for v in (r["device_hit"], r["host_hit"])]
    per_load = (
        f"{_per_load_ms(r['host_load_s'], r['host_loads'])} / "
        f"{_per_load_ms(r['disk_load_s'], r['disk_loads'])}"
    )
    return (
        f"| {r['round']} | {r['traffic']} | {r['clips_per_s']:.1f} | {r['p50_ms']:.0f} "
        f"| {r['p99_ms']:.0f} | {r['errors']} | {r['distinct']} | {hits[0]} | {hits[1]} "
        f"| {r['host_loads']:.0f} / {r['disk_loads']:.0f} | {per_load} "
        f"| {r['loads_per_s']:.1f} | {r['evictions']:.0f} | {r['rows_per_batch']:.1f} "
        f"| {r['forward_ms']:.0f} | {r['queue_wait_ms']:.0f} | {rss} |"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", type=int, default=10_000, help="adapters in the store")
    parser.add_argument("--requests", type=int, default=1_500, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--rounds", type=int, default=5, help="(uniform, zipf) round pairs")
    parser.add_argument("--backbone", default="random:test_vit:1", help="the server's backbone")
    parser.add_argument("--seed", type=int, default=0, help="traces and popularity ranks")
    parser.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="KEY=VALUE", help="server setting"
    )
    parser.add_argument("--json", help="also write the report to this file")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    if min(args.adapters, args.requests, args.concurrency, args.rounds) < 1:
        raise SystemExit("--adapters, --requests, --concurrency and --rounds must be >= 1")
    env = dict(item.split("=", 1) for item in args.server_env)
    backbone = load_backbone(args.backbone)
    frames = min(backbone.cfg.num_frames, 512)  # 1.28 s clips on test_vit, 5 s on ViT-B
    method, config = METHOD
    manifest, weights = _checkpoint(backbone, "x", method, config, frames, seed=0)
    report: dict[str, Any] = {
        "backbone": args.backbone,
        "adapter": f"{method} {config}, {len(weights) / 1024:.1f} kB",
        "adapters": args.adapters,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "seed": args.seed,
        "server_env": env,
        "clip_s": frames / 100,
    }
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        store = Path(tmp) / "store"
        write_store(store, adapter_names(args.adapters), json.loads(manifest), weights)
        report["store_write_s"] = time.perf_counter() - started
        started = time.perf_counter()
        with serve(store, args.backbone, env, args.timeout) as server:
            report["server_ready_s"] = time.perf_counter() - started
            report["ready_rss_mb"] = rss_mb(server.pid)
            report["startup"] = scrape(server.url)
            print(
                f"{args.adapters} adapters ({report['adapter']}) written in "
                f"{report['store_write_s']:.1f} s; server ready in {report['server_ready_s']:.1f} s"
                f" ({report['startup']['loads']:.0f} preloaded)\n\n{HEADER}",
                flush=True,
            )
            clip = _clip(frames / 100)
            report["rounds"] = run_rounds(server, args, clip)
    report.update(summarise(report["rounds"]))
    _print_summary(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def _print_summary(report: dict[str, Any]) -> None:
    print()
    for p in report["pairs"]:
        label = "cold" if p is report["pairs"][0] else "warm"
        print(
            f"round {p['round']} ({label}): zipf/uniform clips/s {p['ratio']:.2f}, "
            f"p99 {p['p99_ratio']:.2f}"
        )
    if report["median_ratio"] is not None:
        print(
            f"median over the warm rounds: clips/s {report['median_ratio']:.2f} (goal >= 0.90), "
            f"p99 {report['median_p99_ratio']:.2f} (goal <= 2); errors {report['errors']}"
        )


if __name__ == "__main__":
    main()
