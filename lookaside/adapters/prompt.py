"""Deep prompt tuning (Jia et al., 2022, VPT-deep; Lester et al., 2021).

Each adapted block gets its own ``P`` learnable tokens, written after the prefix tokens before the
block runs (the previous block's outputs at those positions are discarded). The backbone inserts
the prompt slots just before the first adapted block (``RowRoute.prompt_start``), so earlier blocks
run exactly as the plain ViT. Rows with prompts need a longer sequence from that block on, so a
batch is split into passes by (prompt count, first block)
(:meth:`lookaside.bank.AdapterBank.partition`); inside a pass rows still mix adapters.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from lookaside.adapters.base import AdapterConfig, AdapterMethod, SiteContext, StackedSite
from lookaside.adapters.ops import rows_gather
from lookaside.adapters.slot_index import SlotIndex
from lookaside.sites import SitePosition, TokenLayout


class PromptConfig(AdapterConfig):
    """Deep prompt tuning."""

    num_tokens: int = Field(10, gt=0)
    """Prompt tokens per block."""

    def num_prompts(self) -> int:
        return self.num_tokens


class PromptSite(StackedSite):
    """Per-slot prompts ``[S, P, D]``."""

    def __init__(self, dim: int, num_tokens: int, patch_size: int, num_slots: int) -> None:
        super().__init__(num_slots)
        self.patch_size = patch_size
        self.prompts = self.slot_param(num_tokens, dim)

    def init_slot(self, index: int, generator: torch.Generator) -> None:
        """VPT's uniform init with bound sqrt(6 / (patch_area + D))."""
        dim = self.prompts.shape[2]
        bound = math.sqrt(6.0 / (self.patch_size * self.patch_size + dim))
        self.uniform_slot(self.prompts, index, bound, generator)

    def forward(self, x: Tensor, index: SlotIndex, layout: TokenLayout) -> Tensor:
        return rows_gather(self.prompts, index, x.shape[0]).to(x.dtype)


def _make_sites(config: AdapterConfig, site: SiteContext) -> dict[SitePosition, StackedSite]:
    assert isinstance(config, PromptConfig)
    return {
        "tokens": PromptSite(
            site.width, config.num_tokens, site.backbone.patch_size, site.num_slots
        )
    }


PROMPT = AdapterMethod(
    name="prompt",
    config_cls=PromptConfig,
    make_sites=_make_sites,
    summary="deep prompt tuning: learnable tokens per block",
)
