"""Look-Aside Adapter, LoAA (Yeo et al., 2024, "When Vision Models Meet Parameter Efficient
Look-Aside Adapters Without Large-Scale Audio Pretraining", Eq. 2).

``h <- B(h) + f(h U_down) U_up``: a parallel adapter whose projections are 1-D convolutions over
the token grid, kernel ``(1, 3)`` along time ("T") or ``(3, 1)`` along frequency ("F"); "L" is the
plain linear (1x1) parallel adapter for comparison. The kernel is chosen per site, e.g.
``"attn:T,ffn:F"`` (the paper's best mix). r=36 on one site is about 2 % of ViT-B.

Special tokens (CLS, DIST, prompts) have no grid position: each is convolved as a 1x1 grid with
zero padding, i.e. it sees only the kernel's centre tap (see :func:`ops.grid_unfold`). The grid
needs non-overlapping patches (stride = patch size); an overlapping AST stride is refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from lookaside.adapters.base import AdapterConfig, AdapterMethod, SiteContext, StackedSite, SubLayer
from lookaside.adapters.bottleneck import BottleneckSite
from lookaside.errors import ConfigError
from lookaside.sites import SitePosition

Kernel = Literal["T", "F", "L"]
KERNELS: dict[str, tuple[int, int]] = {"T": (1, 3), "F": (3, 1), "L": (1, 1)}


class LoaaConfig(AdapterConfig):
    """LoAA; ``kernels`` maps sub-layer to kernel, also written ``"attn:T,ffn:F"``."""

    rank: int = Field(36, gt=0)
    """Bottleneck channels r (36: about 2 % of ViT-B per site type; 72: the 10 % setting)."""
    kernels: dict[SubLayer, Kernel] = {"attn": "T"}
    """Kernel per sub-layer: T = (1,3) time, F = (3,1) frequency, L = (1,1) linear."""
    scale: float = 1.0
    """Output scale."""

    @field_validator("kernels", mode="before")
    @classmethod
    def _parse(cls, v: object) -> object:
        if isinstance(v, str):
            pairs = [p.strip() for p in v.split(",") if p.strip()]
            try:
                return dict(p.split(":") for p in pairs)
            except ValueError:
                raise ValueError(f"kernels must look like 'attn:T,ffn:F', got {v!r}") from None
        return v

    @field_validator("kernels")
    @classmethod
    def _non_empty(cls, v: dict[SubLayer, Kernel]) -> dict[SubLayer, Kernel]:
        if not v:
            raise ValueError("kernels must name at least one sub-layer, e.g. 'attn:T'")
        return v

    def spec(self) -> str:
        """Short form, e.g. ``attn:T,ffn:F``."""
        return ",".join(f"{k}:{v}" for k, v in sorted(self.kernels.items()))


def _make_sites(config: AdapterConfig, site: SiteContext) -> dict[SitePosition, StackedSite]:
    assert isinstance(config, LoaaConfig)
    backbone = site.backbone
    if not backbone.grid_is_tiled and any(k != "L" for k in config.kernels.values()):
        raise ConfigError(
            f"LoAA needs tokens on a grid, but backbone {backbone.name!r} uses overlapping patches "
            f"(stride {backbone.patch_stride}, patch {backbone.patch_size}); "
            "use stride = patch size"
        )
    return {
        f"{sub}.parallel": BottleneckSite(  # type: ignore[misc]
            site.width, config.rank, site.num_slots, KERNELS[k], config.scale
        )
        for sub, k in sorted(config.kernels.items())
    }


LOAA = AdapterMethod(
    name="loaa",
    config_cls=LoaaConfig,
    make_sites=_make_sites,
    summary="look-aside adapter: 1-D conv bottleneck along time (1,3) or frequency (3,1)",
)
