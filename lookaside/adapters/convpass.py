"""Convpass: convolutional bypass (Jie & Deng, 2022, "Convolutional Bypasses Are Better Vision
Transformer Adapters").

``y <- B(h) + s * up(gelu(conv3x3(gelu(down(h)))))`` beside attention and FFN. The 3x3 conv runs on
the patch grid; CLS/DIST tokens are convolved as 1x1 images (centre tap only), as the paper's code
does. The public AST code computed this convolution and then used its input instead: our forward
returns the conv path and a test checks the conv weights change the output (docs/design.md §5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from lookaside.adapters.base import (
    AdapterConfig,
    AdapterMethod,
    SiteContext,
    StackedSite,
    SubLayers,
)
from lookaside.adapters.ops import grid_conv, rows_linear
from lookaside.adapters.slot_index import SlotIndex
from lookaside.errors import ConfigError
from lookaside.sites import SitePosition, TokenLayout

CONV_KERNEL = (3, 3)


class ConvpassConfig(AdapterConfig):
    """Convpass on attention and/or FFN."""

    rank: int = Field(8, gt=0)
    """Channels of the bottleneck and of the 3x3 conv (the paper uses 8)."""
    sites: SubLayers = ("attn", "ffn")
    """Sub-layers the bypass runs beside."""
    scale: float = 1.0
    """Output scale s."""


class ConvpassSite(StackedSite):
    """down (linear) -> GELU -> 3x3 conv on the grid -> GELU -> up (linear)."""

    def __init__(self, dim: int, rank: int, scale: float, num_slots: int) -> None:
        super().__init__(num_slots)
        self.scale = scale
        taps = CONV_KERNEL[0] * CONV_KERNEL[1]
        self.down = self.slot_param(dim, rank)
        self.down_bias = self.slot_param(rank)
        self.conv = self.slot_param(taps * rank, rank)
        self.conv_bias = self.slot_param(rank)
        self.up = self.slot_param(rank, dim)
        self.up_bias = self.slot_param(dim)

    def init_slot(self, index: int, generator: torch.Generator) -> None:
        """Xavier-uniform down and conv (conv plus identity at the centre tap), zero up."""
        self.clear_slot(index)
        for p in (self.down, self.conv):
            self.uniform_slot(p, index, math.sqrt(6.0 / (p.shape[1] + p.shape[2])), generator)
        with torch.no_grad():
            rank = self.conv.shape[2]
            centre = (CONV_KERNEL[0] // 2) * CONV_KERNEL[1] + CONV_KERNEL[1] // 2
            self.conv[index, centre * rank : (centre + 1) * rank] += torch.eye(
                rank, device=self.conv.device, dtype=self.conv.dtype
            )

    def forward(self, x: Tensor, index: SlotIndex, layout: TokenLayout) -> Tensor:
        h = F.gelu(rows_linear(x, self.down, self.down_bias, index))
        h = F.gelu(grid_conv(h, self.conv, self.conv_bias, index, layout, CONV_KERNEL))
        out = rows_linear(h, self.up, self.up_bias, index)
        return out * self.scale if self.scale != 1.0 else out


def _make_sites(config: AdapterConfig, site: SiteContext) -> dict[SitePosition, StackedSite]:
    assert isinstance(config, ConvpassConfig)
    if not site.backbone.grid_is_tiled:
        raise ConfigError("Convpass needs non-overlapping patches (stride = patch size)")
    return {
        f"{sub}.parallel": ConvpassSite(  # type: ignore[misc]
            site.width, config.rank, config.scale, site.num_slots
        )
        for sub in config.sites
    }


CONVPASS = AdapterMethod(
    name="convpass",
    config_cls=ConvpassConfig,
    make_sites=_make_sites,
    summary="convolutional bypass: bottleneck with a 3x3 conv on the token grid",
)
