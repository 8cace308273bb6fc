"""LoRA on the query and value projections (Hu et al., 2022).

``q <- q + (alpha / r) * h A_q B_q`` and likewise for v, through the ``attn.qkv`` site. A is
Kaiming-uniform random and B zero, as in the LoRA paper (the public AST code had it reversed:
NOTES §8), so a fresh adapter leaves the backbone unchanged but still receives gradients.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from lookaside.adapters.base import AdapterConfig, AdapterMethod, StackedSite
from lookaside.adapters.ops import rows_linear
from lookaside.adapters.route import SlotIndex
from lookaside.backbone import BackboneConfig
from lookaside.sites import SitePosition, TokenLayout


class LoraConfig(AdapterConfig):
    """LoRA on q and v."""

    rank: int = Field(8, gt=0)
    """Rank r of each update."""
    alpha: float = Field(8.0, gt=0)
    """Scaling numerator: updates are multiplied by alpha / r."""


class LoraQVSite(StackedSite):
    """Adds ``[dq, 0, dv]`` to the fused qkv projection."""

    def __init__(self, dim: int, rank: int, alpha: float, num_slots: int) -> None:
        super().__init__(num_slots)
        self.scaling = alpha / rank
        self.q_a = self.slot_param(dim, rank)
        self.q_b = self.slot_param(rank, dim)
        self.v_a = self.slot_param(dim, rank)
        self.v_b = self.slot_param(rank, dim)

    def init_slot(self, index: int, generator: torch.Generator) -> None:
        """A ~ Kaiming-uniform(a=sqrt(5)) as nn.Linear, B = 0."""
        self.clear_slot(index)
        bound = 1.0 / math.sqrt(self.q_a.shape[1])
        for a in (self.q_a, self.v_a):
            self.uniform_slot(a, index, bound, generator)

    def forward(self, x: Tensor, index: SlotIndex, layout: TokenLayout) -> Tensor:
        dq = rows_linear(rows_linear(x, self.q_a, None, index), self.q_b, None, index)
        dv = rows_linear(rows_linear(x, self.v_a, None, index), self.v_b, None, index)
        return torch.cat([dq, torch.zeros_like(dq), dv], dim=-1) * self.scaling


def _make_sites(
    config: AdapterConfig, backbone: BackboneConfig, num_slots: int
) -> dict[SitePosition, StackedSite]:
    assert isinstance(config, LoraConfig)
    return {"attn.qkv": LoraQVSite(backbone.embed_dim, config.rank, config.alpha, num_slots)}


LORA = AdapterMethod(
    name="lora",
    config_cls=LoraConfig,
    make_sites=_make_sites,
    summary="LoRA on the query and value projections",
)
