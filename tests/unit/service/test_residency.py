"""The residency policy (service.residency): a full stack doubles; victims are idle,
unpinned, ready versions, least recently used first; the resident limit is a target."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from lookaside.errors import ConfigError
from service.registry.active import Entry
from service.residency import Residency, grown_capacity


def entry(
    name: str,
    version: int = 1,
    *,
    used: int,
    leases: int = 0,
    state: str = "ready",
    stack: str = "lora",
) -> Entry:
    return Entry(
        name=name,
        version=version,
        state=state,  # type: ignore[arg-type]
        done=Future(),
        leases=leases,
        last_used=used,
        stack=stack,
    )


def test_a_full_stack_doubles() -> None:
    assert [grown_capacity(n) for n in (0, 1, 3, 8)] == [2, 2, 6, 16]


def test_the_victim_is_the_least_recently_used_idle_unpinned_ready_version() -> None:
    active = {"a": 1}
    policy = Residency(2, pinned=("a", "b@2"), active=active.get)
    entries = [
        entry("a", used=1),  # pinned by name (its active version)
        entry("b", 2, used=2),  # pinned by id
        entry("c", used=5, leases=1),  # leased
        entry("d", used=4, state="loading"),
        entry("e", used=7),
        entry("f", used=6, stack="bottleneck"),
    ]
    assert policy.victim(entries).id == "f@1"  # type: ignore[union-attr]
    assert policy.victim(entries, stack="lora").id == "e@1"  # type: ignore[union-attr]
    assert policy.victim(entries, stack="lora", exclude="e@1") is None
    active["a"] = 2  # the pin follows the active version
    assert policy.victim(entries, stack="lora").id == "a@1"  # type: ignore[union-attr]


def test_the_resident_limit_is_a_target() -> None:
    policy = Residency(2, pinned=(), active=lambda name: None)
    two = [entry("a", used=1), entry("b", used=2)]
    assert policy.over_limit(two) is None
    assert policy.over_limit(two, room_for=1).id == "a@1"  # type: ignore[union-attr]
    held = [entry("a", used=1, leases=1), entry("b", used=2, leases=1)]
    assert policy.over_limit(held, room_for=1) is None  # everything leased: stay above it
    with pytest.raises(ConfigError, match="resident_limit must be >= 1"):
        Residency(0, pinned=(), active=lambda name: None)
