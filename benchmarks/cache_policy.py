"""Eviction policies on adapter request traces: hit rates of LRU and 2Q (printed, never asserted).

    python -m benchmarks.cache_policy                 # a few seconds, deterministic
    python -m benchmarks.cache_policy --json out.json --budgets 64 256

Replays each trace through the shipped :class:`~service.tiers.HostCache` (every item 1 byte,
so a budget of N bytes holds N adapters): a miss is a ``get`` that returns None followed by a
``put``. Traces (fixed seeds):

- ``zipf``: Zipf(s=1.1) over 10,000 ids, ``--requests`` requests after a warm-up of ``--warmup``
  (hit rate over the requests after the warm-up);
- ``zipf-cold``: the first 1,500 requests of that trace from an empty cache (the first round of a
  benchmark: most misses are first touches, no policy helps);
- ``uniform8``: uniform over 8 ids (everything fits: compulsory misses only);
- ``burst``: the Zipf traffic, warmed up, then a burst where three requests in four name a new
  one-hit id (``--burst`` of them, never seen again), then Zipf traffic again: hit rate of the
  Zipf requests from the burst's start to ``--burst`` requests after its end (the burst's own
  requests all miss under any policy).

Columns: ``lru``, ``2q`` (probation 25 %, no ghost list: the shipped default), ``2q+ghost``
(with a ghost list of 50 % of the budget, to show what it would add) and, on Zipf traces,
``top-k`` (the k most popular ids pinned: the bound of a static cache that knows the
distribution).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from service.tiers import EvictionPolicy, HostCache, LruPolicy, TwoQPolicy

IDS = 10_000
ZIPF_S = 1.1
COLD_REQUESTS = 1_500
HOT_MARK = "z"  # the burst's cold ids are "c<n>", never in the Zipf range

POLICIES: dict[str, Callable[[int], EvictionPolicy]] = {
    "lru": LruPolicy,
    "2q": TwoQPolicy,
    "2q+ghost": lambda budget: TwoQPolicy(budget, ghost=0.5),
}


@dataclass(frozen=True)
class _Item:
    nbytes: int = 1


_ONE = _Item()


def zipf_ids(n: int, count: int, s: float, seed: int) -> list[str]:
    """``count`` draws of Zipf(``s``) over ids ``z0`` (the most popular) ... ``z<n-1>``."""
    cumulative = list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n)))
    total = cumulative[-1]
    rng = random.Random(seed)
    draws = (bisect.bisect_left(cumulative, rng.random() * total) for _ in range(count))
    return [f"{HOT_MARK}{i}" for i in draws]


def burst_trace(hot: list[str], warmup: int, burst: int) -> list[str]:
    """``hot`` up to ``warmup``, then ``burst`` one-hit ids three in four, then ``hot`` again."""
    cold = iter(f"c{i}" for i in range(burst))
    spread = hot[warmup : warmup + burst // 3]
    during = [x for h in spread for x in (h, next(cold, None), next(cold, None), next(cold, None))]
    return hot[:warmup] + [x for x in during if x] + hot[warmup + burst // 3 :]


def replay(
    trace: Sequence[str], budget: int, policy: EvictionPolicy, window: tuple[int, int]
) -> float:
    """Hit rate of the hot (Zipf or uniform) requests at indices in ``window``."""
    cache: HostCache[_Item] = HostCache(budget, policy)
    hits = counted = 0
    for i, key in enumerate(trace):
        hit = cache.get(key) is not None
        if not hit:
            cache.put(key, _ONE)
        if window[0] <= i < window[1] and not key.startswith("c"):
            counted += 1
            hits += hit
    return hits / max(counted, 1)


def top_k(trace: Sequence[str], budget: int, window: tuple[int, int]) -> float:
    """Hit rate of a static cache of the ``budget`` most popular Zipf ids."""
    measured = [k for k in trace[window[0] : window[1]] if k.startswith(HOT_MARK)]
    return sum(int(k[1:]) < budget for k in measured) / max(len(measured), 1)


def traces(args: argparse.Namespace) -> Iterator[tuple[str, list[str], tuple[int, int], bool]]:
    """(name, trace, the measured window of indices, whether ``top-k`` applies)."""
    zipf = zipf_ids(IDS, args.warmup + args.requests, ZIPF_S, args.seed)
    everything = (args.warmup, len(zipf) + args.burst)
    yield "zipf", zipf, everything, True
    yield "zipf-cold", zipf[:COLD_REQUESTS], (0, COLD_REQUESTS), True
    rng = random.Random(args.seed + 1)
    uniform = [f"u{rng.randrange(8)}" for _ in range(args.requests)]
    yield "uniform8", uniform, (0, len(uniform)), False
    burst_end = args.warmup + args.burst + args.burst // 3
    window = (args.warmup, burst_end + args.burst)
    yield "burst", burst_trace(zipf, args.warmup, args.burst), window, True


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name, trace, start, static in traces(args):
        for budget in args.budgets:
            row: dict[str, object] = {"trace": name, "budget": budget, "requests": len(trace)}
            for label, factory in POLICIES.items():
                row[label] = round(replay(trace, budget, factory(budget), start), 4)
            row["top-k"] = round(top_k(trace, budget, start), 4) if static else None
            rows.append(row)
    return rows


def table(rows: list[dict[str, object]]) -> str:
    columns = ["trace", "budget", *POLICIES, "top-k"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [str(row[c]) if c in ("trace", "budget") else _rate(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rate(value: object) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 256, 1000, 2000])
    parser.add_argument("--requests", type=int, default=80_000, help="measured Zipf requests")
    parser.add_argument("--warmup", type=int, default=20_000)
    parser.add_argument("--burst", type=int, default=4_000, help="one-hit ids in the burst")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run(args)
    print(table(rows))
    print(f"({time.perf_counter() - started:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
