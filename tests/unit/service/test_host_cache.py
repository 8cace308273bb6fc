"""The host tier (service.tiers.host_cache): bytes within the budget after every operation,
exact accounting against a model of what is cached, bypass, discard, in-flight bytes of held
items, and the same invariants under threads (counts, never timings)."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import pytest

from service.tiers import HostCache, LruPolicy, TwoQPolicy, make_policy


@dataclass(frozen=True)
class Item:
    nbytes: int


def size_of(key: str) -> int:
    """A fixed size per key (1-300 bytes), so any thread can tell a key's size."""
    return 1 + (int(key[1:]) * 7919) % 300


@pytest.mark.parametrize("policy", ["lru", "2q"])
def test_budget_holds_and_bytes_are_exact_under_10000_puts(policy: str) -> None:
    budget = 5_000
    cache: HostCache[Item] = HostCache(budget, make_policy(policy, budget))
    model: dict[str, int] = {}  # what the cache must hold: key -> bytes
    rng = random.Random(7)
    evictions = bypass = 0
    for _ in range(10_000):
        key = f"k{rng.randrange(3_000)}"
        op = rng.random()
        if op < 0.6:
            item = Item(rng.choice([rng.randrange(1, 400), rng.randrange(1, 6_000)]))
            evicted = cache.put(key, item)
            model.pop(key, None)
            for gone in evicted:
                del model[gone]
            evictions += len(evicted)
            if item.nbytes > budget:
                bypass += 1
                assert evicted == []
            else:
                model[key] = item.nbytes
        elif op < 0.9:
            got = cache.get(key)
            assert (got.nbytes if got else None) == model.get(key)
        else:
            assert cache.discard(key) == (model.pop(key, None) is not None)
        stats = cache.stats()
        assert stats.bytes == sum(model.values()) <= budget
        assert stats.entries == len(model) == len(cache)
        assert stats.inflight == 0
    stats = cache.stats()
    assert (stats.evictions, stats.bypass) == (evictions, bypass)
    assert evictions > 1_000
    assert bypass > 100


def test_an_item_over_the_budget_bypasses_and_one_at_the_budget_fills_it() -> None:
    cache: HostCache[Item] = HostCache(100)
    assert cache.put("a", Item(40)) == []
    assert cache.put("huge", Item(101)) == []
    assert "huge" not in cache
    assert cache.get("huge") is None
    assert cache.put("b", Item(100)) == ["a"]
    stats = cache.stats()
    assert (stats.bypass, stats.evictions, stats.bytes, stats.entries) == (1, 1, 100, 1)
    assert cache.put("b", Item(101)) == []  # a bypassing put drops the older entry of its key
    assert "b" not in cache
    assert cache.stats().bytes == 0
    zero: HostCache[Item] = HostCache(0)
    assert zero.put("a", Item(1)) == []
    assert zero.stats().bypass == 1


def test_hits_misses_and_touch_order() -> None:
    cache: HostCache[Item] = HostCache(30, LruPolicy())
    cache.put("a", Item(10))
    cache.put("b", Item(10))
    cache.put("c", Item(10))
    assert cache.get("a") == Item(10)  # a is now the most recent
    assert cache.get("zzz") is None
    assert "b" in cache  # a membership test is neither a hit nor a touch
    assert cache.put("d", Item(15)) == ["b", "c"]
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.evictions, stats.bytes) == (1, 1, 2, 25)


def test_discard_and_replace() -> None:
    cache: HostCache[Item] = HostCache(100, TwoQPolicy(100))
    cache.put("a", Item(30))
    cache.put("a", Item(20))  # a replacement, not an eviction
    assert cache.stats().bytes == 20
    assert cache.stats().evictions == 0
    assert cache.discard("a")
    assert not cache.discard("a")
    assert cache.stats().bytes == 0
    assert len(cache) == 0
    with pytest.raises(ValueError, match="negative size"):
        cache.put("x", Item(-1))
    with pytest.raises(ValueError, match="budget"):
        HostCache(-1)


def test_an_evicted_item_being_copied_stays_counted_in_flight_until_released() -> None:
    cache: HostCache[Item] = HostCache(100)
    cache.put("a", Item(60))
    assert cache.hold("a")
    assert cache.hold("a")
    assert not cache.hold("missing")
    assert cache.put("b", Item(70)) == ["a"]
    stats = cache.stats()
    assert (stats.bytes, stats.inflight) == (70, 60)
    cache.release("a")
    assert cache.stats().inflight == 60  # one copy still reads it
    cache.release("a")
    assert cache.stats().inflight == 0
    cache.release("a")  # an extra release changes nothing
    assert cache.stats().inflight == 0


def test_a_released_item_leaves_without_in_flight_bytes_and_discard_of_a_held_one_counts() -> None:
    cache: HostCache[Item] = HostCache(100)
    cache.put("a", Item(50))
    cache.hold("a")
    cache.release("a")  # copied: no longer held
    cache.put("b", Item(80))
    assert cache.stats().inflight == 0
    cache.hold("b")
    assert cache.discard("b")  # deleted while being copied
    assert (cache.stats().bytes, cache.stats().inflight) == (0, 80)
    cache.release("b")
    assert cache.stats().inflight == 0


def hammer(cache: HostCache[Item], n: int, errors: list[str]) -> int:
    """3,000 random get/put/discard/hold/release calls on 100 keys; returns how many gets.
    Every hold is released before it returns."""
    rng = random.Random(n)
    held: list[str] = []
    gets = 0
    for _ in range(3_000):
        key = f"k{rng.randrange(100)}"
        op = rng.random()
        if op < 0.4:
            cache.put(key, Item(size_of(key)))
        elif op < 0.8:
            gets += 1
            got = cache.get(key)
            if got is not None and got.nbytes != size_of(key):
                errors.append(f"{key}: {got.nbytes}")
        elif op < 0.9:
            cache.discard(key)
        elif cache.hold(key):
            held.append(key)
        if held and rng.random() < 0.3:
            cache.release(held.pop(0))
    for key in held:
        cache.release(key)
    return gets


def test_threads_keep_the_invariants() -> None:
    budget = 2_000
    cache: HostCache[Item] = HostCache(budget, TwoQPolicy(budget))
    gets = [0] * 4
    errors: list[str] = []
    stop = threading.Event()

    def worker(n: int) -> None:
        gets[n] = hammer(cache, n, errors)

    def watcher() -> None:
        while not stop.is_set():
            stats = cache.stats()
            if not 0 <= stats.bytes <= budget or stats.inflight < 0:
                errors.append(f"stats {stats}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    watch = threading.Thread(target=watcher)
    watch.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    stop.set()
    watch.join(timeout=60)
    assert not any(t.is_alive() for t in [*threads, watch])
    assert errors == []
    stats = cache.stats()
    live = [f"k{i}" for i in range(100) if f"k{i}" in cache]
    assert stats.bytes == sum(size_of(k) for k in live) <= budget
    assert stats.entries == len(live)
    assert stats.inflight == 0  # every hold was released
    assert stats.hits + stats.misses == sum(gets)
