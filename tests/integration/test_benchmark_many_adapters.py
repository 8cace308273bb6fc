"""The many-adapters benchmark runs end to end against a real server process (tiny backbone, 50
adapters, a few seconds; its timings are not asserted here, only the report's structure, that no
request failed, and that its per-round load and eviction counts from ``/metrics`` are the ones an
LRU replay of the same requests gives)."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from benchmarks.many_adapters import (
    HOT,
    adapter_names,
    main,
    popularity,
    round_seeds,
    uniform_trace,
    zipf_trace,
)

ADAPTERS, REQUESTS, LIMIT = 50, 60, 8


def _lru(cache: OrderedDict[str, None], trace: Iterable[str]) -> tuple[int, int]:
    """(loads, evictions) of ``trace`` through a least-recently-used set of ``LIMIT`` names."""
    loads = evictions = 0
    for name in trace:
        if name in cache:
            cache.move_to_end(name)
            continue
        loads += 1
        while len(cache) >= LIMIT:
            cache.popitem(last=False)
            evictions += 1
        cache[name] = None
    return loads, evictions


def test_many_adapters_reports_rounds_and_counts_loads(tmp_path: Path) -> None:
    out = tmp_path / "many.json"
    argv = ["--adapters", str(ADAPTERS), "--requests", str(REQUESTS), "--concurrency", "1"]
    argv += ["--rounds", "1", "--server-env", f"LOOKASIDE_MAX_RESIDENT_ADAPTERS={LIMIT}"]
    argv += ["--server-env", "LOOKASIDE_DEVICE_CACHE_POLICY=lru"]
    returned = main([*argv, "--json", str(out)])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["adapters"] == ADAPTERS
    assert report["errors"] == 0
    [uniform, zipf] = report["rounds"]
    assert (uniform["traffic"], zipf["traffic"]) == ("uniform", "zipf")

    # The same traces, regenerated: concurrency 1 makes the server's order the trace's order.
    names = adapter_names(ADAPTERS)
    order = popularity(ADAPTERS, report["seed"])
    seeds = round_seeds(report["seed"], 0)
    traces = {
        "uniform": [names[i] for i in uniform_trace(order, REQUESTS, seeds["uniform"])],
        "zipf": [names[i] for i in zipf_trace(order, REQUESTS, seeds["zipf"])],
    }
    # Startup preloads the first names in sorted order up to the limit; the warm-up is
    # round-robin over the hot adapters.
    assert report["startup"]["loads"] == LIMIT
    cache = OrderedDict.fromkeys(names[:LIMIT])
    hot = [names[i] for i in order[:HOT]]
    _lru(cache, [hot[i % HOT] for i in range(2 * HOT)])
    read = set(names[:LIMIT]) | set(hot)  # the host tier (derived: far larger) keeps them all
    for row in (uniform, zipf):
        trace = traces[row["traffic"]]
        first_reads = len(set(trace) - read)
        read |= set(trace)
        assert (row["disk_loads"], row["host_loads"]) == (first_reads, row["loads"] - first_reads)
        assert (row["device_hits"], row["device_misses"]) == (REQUESTS - row["loads"], row["loads"])
        assert row["requests"] == REQUESTS
        assert row["errors"] == 0
        assert row["failures"] == {}
        assert row["distinct"] == len(set(trace))
        assert (row["loads"], row["evictions"]) == _lru(cache, trace), row
        assert row["resident"] == LIMIT
        assert row["clips_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["load_s"] >= 0
        assert row["loads_per_s"] == row["loads"] / row["seconds"]
    assert uniform["distinct"] <= HOT < zipf["distinct"]
    [pair] = report["pairs"]
    assert pair["ratio"] == zipf["clips_per_s"] / uniform["clips_per_s"]
    assert pair["p99_ratio"] == zipf["p99_ms"] / uniform["p99_ms"]
    assert report["cold"]["zipf"] == zipf
    assert report["median_ratio"] is None  # no warm round after the cold one
