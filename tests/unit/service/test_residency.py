"""The residency policy (service.residency): a full stack doubles; victims are idle, unpinned,
ready versions in the eviction policy's order; the device budget (bytes) and the optional count
are targets."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from lookaside.errors import ConfigError
from service.registry.active import Entry
from service.residency import Residency, grown_capacity
from service.tiers.policy import LruPolicy, TwoQPolicy


def entry(
    name: str,
    version: int = 1,
    *,
    used: int,
    leases: int = 0,
    state: str = "ready",
    stack: str = "lora",
    nbytes: int = 10,
) -> Entry:
    return Entry(
        name=name,
        version=version,
        state=state,  # type: ignore[arg-type]
        done=Future(),
        leases=leases,
        last_used=used,
        stack=stack,
        device_bytes=nbytes,
    )


def test_a_full_stack_doubles() -> None:
    assert [grown_capacity(n) for n in (0, 1, 3, 8)] == [2, 2, 6, 16]


def by_id(*entries: Entry) -> dict[str, Entry]:
    return {e.id: e for e in entries}


def admitted(policy: LruPolicy | TwoQPolicy, entries: dict[str, Entry]) -> None:
    """Tell the policy of each entry, in ``last_used`` order (what the registry does on leases)."""
    for e in sorted(entries.values(), key=lambda e: e.last_used):
        policy.admit(e.id, e.device_bytes)


def test_the_victim_is_the_first_idle_unpinned_ready_version_in_policy_order() -> None:
    active = {"a": 1}
    lru = LruPolicy()
    residency = Residency(("a", "b@2"), active.get, count_limit=2, policy=lru)
    entries = by_id(
        entry("a", used=1),  # pinned by name (its active version)
        entry("b", 2, used=2),  # pinned by id
        entry("c", used=5, leases=1),  # leased
        entry("d", used=4, state="loading"),
        entry("e", used=7),
        entry("f", used=6, stack="bottleneck"),
    )
    admitted(lru, entries)
    assert residency.victim(entries).id == "f@1"  # type: ignore[union-attr]
    assert residency.victim(entries, stack="lora").id == "e@1"  # type: ignore[union-attr]
    assert residency.victim(entries, stack="lora", exclude="e@1") is None
    active["a"] = 2  # the pin follows the active version
    assert residency.victim(entries, stack="lora").id == "a@1"  # type: ignore[union-attr]
    lru.touch("a@1")  # used again: last in line
    assert residency.victim(entries, stack="lora").id == "e@1"  # type: ignore[union-attr]


def test_the_byte_budget_and_the_count_are_targets() -> None:
    residency = Residency((), lambda name: None, budget_bytes=100, policy=LruPolicy())
    two = by_id(entry("a", used=1, nbytes=40), entry("b", used=2, nbytes=40))
    admitted(residency.policy, two)  # type: ignore[arg-type]
    assert residency.over_limit(two, 2, 80) is None
    assert residency.over_limit(two, 2, 80, room_for=1, room_bytes=20) is None  # exactly 100
    assert residency.over_limit(two, 2, 80, room_for=1, room_bytes=21).id == "a@1"  # type: ignore[union-attr]
    held = by_id(entry("a", used=1, leases=1, nbytes=40), entry("b", used=2, leases=1, nbytes=40))
    assert residency.over_limit(held, 2, 80, room_bytes=50) is None  # all leased: stay above it
    counted = Residency((), lambda name: None, count_limit=2, policy=LruPolicy())
    admitted(counted.policy, two)  # type: ignore[arg-type]
    assert counted.over_limit(two, 2, 10**12) is None  # no byte budget: only the count
    assert counted.over_limit(two, 2, 0, room_for=1).id == "a@1"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="resident_limit must be >= 1"):
        Residency((), lambda name: None, count_limit=0)
    with pytest.raises(ConfigError, match="device_cache_bytes must be >= 0"):
        Residency((), lambda name: None, budget_bytes=-1)


def test_2q_keeps_the_twice_used_versions_through_a_burst_of_one_offs() -> None:
    """Hot versions used twice sit in 2Q's main queue; a burst of first touches is evicted
    among itself (LRU would evict the hot ones first, being older)."""
    for policy, expected in ((TwoQPolicy(100), "cold1@1"), (LruPolicy(), "hot0@1")):
        residency = Residency((), lambda name: None, budget_bytes=100, policy=policy)
        entries = by_id(*(entry(f"hot{i}", used=i) for i in range(4)))
        admitted(policy, entries)
        for e in entries.values():
            policy.touch(e.id)  # a second request each
        burst = by_id(*(entry(f"cold{i}", used=10 + i) for i in range(1, 4)))
        entries.update(burst)
        admitted(policy, burst)
        victim = residency.victim(entries)
        assert victim is not None
        assert victim.id == expected
