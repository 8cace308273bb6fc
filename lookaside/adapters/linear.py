"""Linear probe: only the per-adapter head (LayerNorm + Linear) is trained; no sites."""

from __future__ import annotations

from lookaside.adapters.base import AdapterConfig, AdapterMethod, SiteContext, StackedSite
from lookaside.sites import SitePosition


class LinearConfig(AdapterConfig):
    """No options: the head is configured by the task (classes, pooling)."""


def _no_sites(config: AdapterConfig, site: SiteContext) -> dict[SitePosition, StackedSite]:
    return {}


LINEAR = AdapterMethod(
    name="linear",
    config_cls=LinearConfig,
    make_sites=_no_sites,
    summary="linear probe: head only",
    head_only=True,
)
