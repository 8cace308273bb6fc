"""A burst of cold adapters beside a hot one: does the hot adapter's latency hold? (issue 21;
printed, never asserted)

    python -m benchmarks.cold_burst                 # tiny backbone, ~1 min on 2 cores

This process writes a store of ``--adapters`` LoRA r=8 adapters (as ``benchmarks.many_adapters``)
and starts ``python -m service`` on it with default settings but for a preload of the hot adapter
only (``--server-env KEY=VALUE`` changes one). A hot client sends ``--rate`` requests a second,
open loop (each on its own, whatever the others' latency), to one adapter that is resident. Two
phases of ``--seconds`` each:

- **alone**: the hot client only;
- **warm burst**: the hot client, plus ``--burst-concurrency`` clients sending ``--burst``
  requests as fast as they are answered, all to the (resident) hot adapter: the same work as the
  cold burst but for the loads, so what the server's saturation alone costs the hot client;
- **cold burst**: the same, but one request to each of ``--burst`` adapters never used before
  (every one a disk load).

The cold burst's cost to the hot adapter is its latency there over the warm burst's.

Reported per phase: the hot adapter's p50/p99 latency and answers by status (during a burst: of
the hot requests sent while it ran); for the burst its
answers by status (a 503 ``cold_overload`` is the admission bound working), the loads it caused
and the loads per second. The bound the tests assert by ordering (hot rows answered before the
burst's loads complete, never refused) is what this measures in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from benchmarks.many_adapters import METHOD, adapter_names, scrape, serve, write_store
from benchmarks.serve_http import _checkpoint, _clip
from lookaside.backbones import load_backbone

WAV = {"Content-Type": "audio/wav"}


async def _post(
    client: httpx.AsyncClient, url: str, name: str, clip: bytes
) -> tuple[str, float, float]:
    """(status, latency, sent at)."""
    start = time.perf_counter()
    try:
        r = await client.post(f"{url}/classify?adapter={name}", content=clip, headers=WAV)
        status = str(r.status_code)
        if r.status_code == 503 and "cold_overload" in r.text:
            status = "503 cold_overload"
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return status, time.perf_counter() - start, start


def _summary(answers: list[tuple[str, float, float]]) -> dict[str, Any]:
    latencies = sorted(s for status, s, _ in answers if status == "200")
    return {
        "requests": len(answers),
        "status": dict(Counter(status for status, _, _ in answers)),
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
    }


async def _hot(
    url: str, name: str, clip: bytes, rate: float, seconds: float
) -> list[tuple[str, float, float]]:
    """Open loop: one request every 1/rate s for ``seconds``; (status, latency, sent at) each."""
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=256)) as c:
        tasks = []
        start = time.perf_counter()
        k = 0
        while (due := start + k / rate) < start + seconds:
            await asyncio.sleep(max(due - time.perf_counter(), 0.0))
            tasks.append(asyncio.create_task(_post(c, url, name, clip)))
            k += 1
        return list(await asyncio.gather(*tasks))


async def _beside(
    url: str, args: argparse.Namespace, hot: str, names: list[str], clip: bytes
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The hot client and a burst over ``names`` at once; (hot, burst) reports: the hot one for
    the requests sent while the burst ran, the burst's with the loads it caused."""
    before = scrape(url)
    hot_task = asyncio.create_task(_hot(url, hot, clip, args.rate, args.seconds))
    started = time.perf_counter()
    burst = await _burst(url, names, clip, args.burst_concurrency)
    ended = time.perf_counter()
    beside = _summary([a for a in await hot_task if started <= a[2] <= ended])
    burst["loads"] = scrape(url)["loads"] - before["loads"]
    burst["loads_per_s"] = burst["loads"] / burst["seconds"]
    return beside, burst


async def _burst(url: str, names: list[str], clip: bytes, concurrency: int) -> dict[str, Any]:
    queue = iter(names)
    statuses: Counter[str] = Counter()

    async def worker(c: httpx.AsyncClient) -> None:
        for name in queue:
            status, _, _ = await _post(c, url, name, clip)
            statuses[status] += 1

    start = time.perf_counter()
    async with httpx.AsyncClient(
        timeout=120, limits=httpx.Limits(max_connections=concurrency)
    ) as c:
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
    return {
        "requests": len(names),
        "status": dict(statuses),
        "seconds": time.perf_counter() - start,
    }


async def _phases(url: str, args: argparse.Namespace, clip: bytes) -> dict[str, Any]:
    names = adapter_names(args.adapters)
    hot, cold = names[0], names[args.adapters - args.burst :]  # preload takes the first names
    await _hot(url, hot, clip, args.rate, 2.0)  # warm-up, not reported
    out: dict[str, Any] = {"hot": hot}
    out["alone"] = _summary(await _hot(url, hot, clip, args.rate, args.seconds))
    out["warm_hot"], out["warm"] = await _beside(url, args, hot, [hot] * len(cold), clip)
    out["burst_hot"], out["burst"] = await _beside(url, args, hot, cold, clip)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", type=int, default=2_000, help="adapters in the store")
    parser.add_argument("--burst", type=int, default=1_000, help="cold adapters in the burst")
    parser.add_argument("--burst-concurrency", type=int, default=32, help="burst clients")
    parser.add_argument("--rate", type=float, default=20.0, help="hot requests per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--backbone", default="random:test_vit:1", help="the server's backbone")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.burst >= args.adapters:
        raise SystemExit("--burst must be below --adapters (the hot adapter is not in it)")
    # only the hot adapter (the first name) is preloaded: every burst request is a disk load
    env = {"LOOKASIDE_PRELOAD_ADAPTERS": "1"}
    env.update(item.split("=", 1) for item in args.server_env)
    backbone = load_backbone(args.backbone)
    frames = min(backbone.cfg.num_frames, 512)
    method, config = METHOD
    manifest, weights = _checkpoint(backbone, "x", method, config, frames, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        write_store(store, adapter_names(args.adapters), json.loads(manifest), weights)
        with serve(store, args.backbone, env, 600.0) as server:
            report = asyncio.run(_phases(server.url, args, _clip(frames / 100)))
    report["args"] = vars(args)
    for phase, label in (
        ("alone", "alone"),
        ("warm_hot", "warm burst"),
        ("burst_hot", "cold burst"),
    ):
        r = report[phase]
        print(f"hot, {label:10}: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, {r['status']}")
    for phase in ("warm", "burst"):
        b = report[phase]
        print(
            f"{phase} burst: {b['requests']} requests in {b['seconds']:.1f} s, {b['status']}, "
            f"{b['loads']:.0f} loads ({b['loads_per_s']:.1f}/s)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
