"""Parallel bottleneck adapter (Houlsby et al., 2019; He et al., 2022, "parallel adapter").

``y <- B(h) + s * f(h W_down) W_up`` beside the attention and/or FFN sub-layer ``B``
(docs/design.md §2):
``sites=("attn",)`` is the Pfeiffer placement used by the MoA paper, ``("attn", "ffn")`` Houlsby.
``W_up`` starts at zero so a fresh adapter leaves the backbone's output unchanged.

:class:`BottleneckSite` is shared with LoAA (a kernel other than ``(1, 1)`` turns both projections
into 1-D convolutions over the token grid) and AAT.
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
from lookaside.adapters.ops import grid_conv
from lookaside.adapters.slot_index import SlotIndex
from lookaside.sites import SitePosition, TokenLayout


class BottleneckSite(StackedSite):
    """``s * up(gelu(down(x)))`` with optional grid-conv kernels on both projections.

    Parameters (per slot): ``down`` ``[k*D, r]``, ``down_bias`` ``[r]``, ``up`` ``[k*r, D]``,
    ``up_bias`` ``[D]`` where ``k = kh*kw`` taps (:func:`~lookaside.adapters.ops.grid_unfold`).
    """

    def __init__(
        self,
        dim: int,
        rank: int,
        num_slots: int,
        kernel: tuple[int, int] = (1, 1),
        scale: float = 1.0,
    ) -> None:
        super().__init__(num_slots)
        self.kernel = kernel
        self.scale = scale
        taps = kernel[0] * kernel[1]
        self.down = self.slot_param(taps * dim, rank)
        self.down_bias = self.slot_param(rank)
        self.up = self.slot_param(taps * rank, dim)
        self.up_bias = self.slot_param(dim)

    def init_slot(self, index: int, generator: torch.Generator) -> None:
        """Kaiming-uniform down projection (as nn.Linear/Conv2d); zero up projection and biases."""
        self.clear_slot(index)
        self.uniform_slot(self.down, index, 1.0 / math.sqrt(self.down.shape[1]), generator)

    def forward(self, x: Tensor, index: SlotIndex, layout: TokenLayout) -> Tensor:
        h = F.gelu(grid_conv(x, self.down, self.down_bias, index, layout, self.kernel))
        out = grid_conv(h, self.up, self.up_bias, index, layout, self.kernel)
        return out * self.scale if self.scale != 1.0 else out


class BottleneckConfig(AdapterConfig):
    """Parallel bottleneck adapter; the paper's 5 % setting is ``rank=108`` on both sites."""

    rank: int = Field(64, gt=0)
    """Bottleneck width r."""
    sites: SubLayers = ("attn", "ffn")
    """Sub-layers the adapter runs beside: attn (Pfeiffer) or attn,ffn (Houlsby)."""
    scale: float = 1.0
    """Output scale s."""


def _make_sites(config: AdapterConfig, site: SiteContext) -> dict[SitePosition, StackedSite]:
    assert isinstance(config, BottleneckConfig)
    return {
        f"{sub}.parallel": BottleneckSite(  # type: ignore[misc]
            site.width, config.rank, site.num_slots, scale=config.scale
        )
        for sub in config.sites
    }


BOTTLENECK = AdapterMethod(
    name="bottleneck",
    config_cls=BottleneckConfig,
    make_sites=_make_sites,
    summary="parallel bottleneck adapter beside attention and/or FFN (Houlsby / Pfeiffer)",
)
