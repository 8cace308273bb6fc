"""Adapter tiers: the eviction policies, the host cache and the byte budgets.

Owned by the registry (it decides what lives in which tier); this package imports nothing from
the registry or the engine, so both can use it:

- :mod:`service.tiers.policy`: which entry leaves first (LRU, 2Q), pure Python;
- :mod:`service.tiers.host_cache`: validated, packed adapters in host memory within a budget in
  bytes, with hit/miss/bypass/eviction counters and in-flight bytes;
- :mod:`service.tiers.budget`: the budgets per tier, set or derived from free memory.
"""

from __future__ import annotations

from service.tiers.budget import Budgets, derive_budgets, mem_available
from service.tiers.host_cache import HostCache, Sized, TierStats
from service.tiers.policy import POLICIES, EvictionPolicy, LruPolicy, TwoQPolicy, make_policy

__all__ = [
    "POLICIES",
    "Budgets",
    "EvictionPolicy",
    "HostCache",
    "LruPolicy",
    "Sized",
    "TierStats",
    "TwoQPolicy",
    "derive_budgets",
    "make_policy",
    "mem_available",
]
