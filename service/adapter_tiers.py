"""Startup wiring of the adapter tiers: their byte budgets, the host cache and the packing.

Called once by the app's lifespan, after the backbone is on its device (so on CUDA the free
memory measured is what is left beside it) and before the engine is built (its growth obeys the
device budget). The budgets come from the settings, or are derived (:mod:`service.tiers.budget`)
and logged with where each number came from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from lookaside.bank.packed import PackedAdapter
from service.settings import ServiceSettings
from service.tiers import Budgets, HostCache, derive_budgets, make_policy, mem_available

__all__ = ["TierSetup", "tier_setup"]

log = logging.getLogger("service.tiers")


@dataclass(frozen=True)
class TierSetup:
    """The budgets, and the host cache (None when its budget is 0)."""

    budgets: Budgets
    host: HostCache[PackedAdapter] | None


def tier_setup(settings: ServiceSettings, device: torch.device) -> TierSetup:
    """Budgets per tier (set, or derived from free memory) and the host cache; logs them."""
    free = None
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
    budgets = derive_budgets(
        str(device),
        free,
        mem_available(),
        settings.ray_replicas if settings.ray else 1,
        settings.device_cache_bytes,
        settings.host_cache_bytes,
    )
    log.info("%s; device policy %s", budgets.note, settings.device_cache_policy)
    host = None
    if budgets.host > 0:
        host = HostCache[PackedAdapter](budgets.host, make_policy("lru", budgets.host))
    return TierSetup(budgets, host)
