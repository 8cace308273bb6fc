"""Eviction policies of the tiers (service.tiers.policy): scripted sequences with hand-derived
hits, misses and eviction order, and random sequences against brute-force references."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.tiers import POLICIES, EvictionPolicy, HostCache, LruPolicy, TwoQPolicy, make_policy


@dataclass(frozen=True)
class Item:
    nbytes: int = 1


def replay(
    keys: Sequence[str], budget: int, policy: EvictionPolicy, size: Callable[[str], int] = len
) -> tuple[int, int, list[str]]:
    """(hits, misses, evicted keys in order) of ``keys`` through a host cache."""
    cache: HostCache[Item] = HostCache(budget, policy)
    hits = misses = 0
    evicted: list[str] = []
    for key in keys:
        if cache.get(key) is not None:
            hits += 1
        else:
            misses += 1
            evicted += cache.put(key, Item(size(key)))
    return hits, misses, evicted


HOT_THEN_SCAN = ["a", "a", "b", "b", "x", "y", "z", "v", "w", "a", "b"]


def test_lru_by_hand_a_scan_flushes_the_hot_keys() -> None:
    # budget 4: after x y the cache is full (a b x y); z evicts a, v evicts b, w evicts x;
    # a and b come back as misses and evict y, z.
    assert replay(HOT_THEN_SCAN, 4, LruPolicy()) == (2, 9, ["a", "b", "x", "y", "z"])


def test_2q_by_hand_a_one_hit_scan_does_not_evict_twice_touched_keys() -> None:
    # budget 4, probation 1 item: a and b are promoted by their second touch; the scan
    # x y z v w lives in probation, and each new key evicts the oldest one-hit key.
    assert replay(HOT_THEN_SCAN, 4, TwoQPolicy(4)) == (4, 7, ["x", "y", "z"])


def test_2q_by_hand_main_is_lru_once_probation_is_within_its_share() -> None:
    policy = TwoQPolicy(8)  # probation: 2 bytes
    for key in "abc":
        policy.admit(key, 1)
        policy.touch(key)  # a b c in main, least recent first
    policy.touch("a")  # main: b c a
    policy.admit("p", 1)  # probation: p (1 byte, within its share)
    assert list(policy.victims(lambda _k: True)) == ["b", "c", "a", "p"]
    policy.admit("q", 1)
    policy.admit("r", 1)  # probation 3 bytes > 2: its oldest goes first
    assert list(policy.victims(lambda _k: True)) == ["p", "b", "c", "a", "q", "r"]


def test_victims_skip_keys_that_are_not_evictable() -> None:
    lru = LruPolicy()
    for key in "abcd":
        lru.admit(key, 1)
    assert list(lru.victims(lambda k: k not in {"a", "c"})) == ["b", "d"]
    twoq = TwoQPolicy(4)
    for key in "abcd":
        twoq.admit(key, 1)  # all in probation, FIFO
    twoq.touch("d")  # d promoted to main
    assert list(twoq.victims(lambda k: k != "a")) == ["b", "c", "d"]


def test_touch_and_readmit_promote_in_2q_and_refresh_in_lru() -> None:
    lru = LruPolicy()
    for key in "abc":
        lru.admit(key, 1)
    lru.touch("a")
    lru.admit("b", 1)
    lru.touch("missing")
    assert list(lru.victims(lambda _k: True)) == ["c", "a", "b"]
    twoq = TwoQPolicy(100)
    twoq.admit("a", 1)
    twoq.admit("b", 1)
    twoq.admit("a", 1)  # a second admit is a second touch: main
    twoq.touch("missing")
    assert list(twoq.victims(lambda _k: True)) == ["a", "b"]  # probation (1 <= 25) after main
    assert len(twoq) == 2
    assert "a" in twoq
    assert "missing" not in twoq


def test_2q_ghost_list_remembers_only_evicted_probation_keys() -> None:
    policy = TwoQPolicy(4, ghost=0.5)  # ghost: 2 bytes
    for key in "abc":
        policy.admit(key, 1)
    policy.discard("a", evicted=True)
    policy.discard("b")  # deleted, not evicted: not remembered
    assert policy.ghosts() == 1
    policy.admit("a", 1)  # back from the ghost list: straight into main
    policy.admit("d", 1)  # probation c d: 2 bytes over its 1, so c goes before main's a
    assert list(policy.victims(lambda _k: True)) == ["c", "a", "d"]
    assert policy.ghosts() == 0
    for key in "xyz":
        policy.admit(key, 1)
        policy.discard(key, evicted=True)
    assert policy.ghosts() == 2  # bounded by its share of the budget
    assert TwoQPolicy(4).ghosts() == 0  # off by default


def test_2q_counts_bytes_for_its_probation_share() -> None:
    policy = TwoQPolicy(100)  # probation: 25 bytes
    policy.admit("m", 10)
    policy.touch("m")
    policy.admit("big", 30)
    policy.admit("small", 1)  # probation 31 bytes > 25: evicting "big" brings it to 1
    assert list(policy.victims(lambda _k: True)) == ["big", "m", "small"]
    policy.discard("big", evicted=True)
    assert list(policy.victims(lambda _k: True)) == ["m", "small"]


def lru_reference(keys: Sequence[str], budget: int) -> tuple[int, int, list[str]]:
    """LRU by brute force: the victim is the cached key with the oldest last access."""
    last: dict[str, int] = {}
    hits = misses = 0
    evicted: list[str] = []
    for t, key in enumerate(keys):
        if key in last:
            hits += 1
        else:
            misses += 1
            while len(last) >= budget:
                victim = min(last, key=last.__getitem__)
                del last[victim]
                evicted.append(victim)
        last[key] = t
    return hits, misses, evicted


def twoq_reference(keys: Sequence[str], budget: int) -> tuple[int, int, list[str]]:
    """2Q by brute force, one victim at a time: the oldest probation key while probation holds
    more than a quarter of the budget (or main is empty), else the least recently used main key."""
    entered: dict[str, int] = {}  # probation key -> when it entered
    last: dict[str, int] = {}  # main key -> last access
    hits = misses = 0
    evicted: list[str] = []
    for t, key in enumerate(keys):
        if key in last:
            hits += 1
            last[key] = t
            continue
        if key in entered:
            hits += 1
            del entered[key]
            last[key] = t
            continue
        misses += 1
        while len(entered) + len(last) >= budget:
            if len(entered) > budget // 4 or not last:
                victim = min(entered, key=entered.__getitem__)
                del entered[victim]
            else:
                victim = min(last, key=last.__getitem__)
                del last[victim]
            evicted.append(victim)
        entered[key] = t
    return hits, misses, evicted


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("budget", [1, 3, 8])
def test_random_sequences_match_the_brute_force_references(seed: int, budget: int) -> None:
    rng = random.Random(seed)
    keys = [f"k{min(int(rng.paretovariate(1.0)), 30)}" for _ in range(400)]
    one = lambda _k: 1  # noqa: E731
    assert replay(keys, budget, LruPolicy(), one) == lru_reference(keys, budget)
    assert replay(keys, budget, TwoQPolicy(budget), one) == twoq_reference(keys, budget)


def test_policies_by_name() -> None:
    assert set(POLICIES) == {"lru", "2q"}
    assert isinstance(make_policy("2q", 10), TwoQPolicy)
    assert isinstance(make_policy("lru", 10), LruPolicy)
    with pytest.raises(ValueError, match="unknown eviction policy"):
        make_policy("lfu", 10)
    with pytest.raises(ValueError, match="bad 2Q sizes"):
        TwoQPolicy(10, probation=0.0)


def test_the_trace_replay_benchmark_runs_and_2q_resists_the_burst(tmp_path: Path) -> None:
    from benchmarks.cache_policy import main

    out = tmp_path / "policy.json"
    args = ["--budgets", "8", "64", "--requests", "3000", "--warmup", "1000", "--burst", "600"]
    main([*args, "--json", str(out)])
    rows = {(r["trace"], r["budget"]): r for r in json.loads(out.read_text())}
    assert set(rows) == {
        (t, b) for t in ("zipf", "zipf-cold", "uniform8", "burst") for b in (8, 64)
    }
    compulsory_only = pytest.approx((3000 - 8) / 3000, abs=1e-4)  # 8 first touches miss
    assert rows["uniform8", 8]["lru"] == rows["uniform8", 8]["2q"] == compulsory_only
    for budget in (8, 64):
        assert rows["burst", budget]["2q"] > rows["burst", budget]["lru"]
