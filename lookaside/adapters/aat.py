"""AAT: Adapting Audio Transformers (Liang et al., 2024), Eq. 3-4.

Two bottleneck adapters per block:
- a spatial adapter after MHSA, with a shortcut: ``y_attn <- y_attn + S(y_attn)``;
- an MLP adapter parallel to the FFN, without a shortcut: ``y_ffn <- FFN(h) + s * M(h)``.
``spatial=False`` keeps the MLP adapter alone (the paper's MLP-only variant, Table 1's first AAT
row).
Down projections random; up projections and all biases zero (the paper's Section 3.1.2), so a
fresh AAT adapter leaves the backbone unchanged.
"""

from __future__ import annotations

from pydantic import Field

from lookaside.adapters.base import AdapterConfig, AdapterMethod, SiteContext, StackedSite
from lookaside.adapters.bottleneck import BottleneckSite
from lookaside.sites import SitePosition


class AatConfig(AdapterConfig):
    """AAT; both adapters share the bottleneck width."""

    rank: int = Field(64, gt=0)
    """Bottleneck width of both adapters."""
    mlp_scale: float = 0.5
    """Scale s of the MLP adapter's output."""
    spatial: bool = True
    """Also the spatial adapter after MHSA (false: the MLP adapter alone, AAT Table 1's
    3.567M row)."""


def _make_sites(config: AdapterConfig, site: SiteContext) -> dict[SitePosition, StackedSite]:
    assert isinstance(config, AatConfig)
    D = site.width
    sites: dict[SitePosition, StackedSite] = {}
    if config.spatial:
        sites["attn.post"] = BottleneckSite(D, config.rank, site.num_slots)
    sites["ffn.parallel"] = BottleneckSite(D, config.rank, site.num_slots, scale=config.mlp_scale)
    return sites


AAT = AdapterMethod(
    name="aat",
    config_cls=AatConfig,
    make_sites=_make_sites,
    summary="AAT: spatial adapter after MHSA (shortcut) + MLP adapter parallel to the FFN",
)
