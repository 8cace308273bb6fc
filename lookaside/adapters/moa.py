"""Dense and Soft Mixture of Adapters (Cappellazzo et al., 2024, "Efficient Fine-tuning of Audio
Spectrogram Transformers via Soft Mixture of Adapters").

N bottleneck experts of rank r beside attention (Pfeiffer) or attention and FFN (Houlsby).

- Dense-MoA (Eq. 1-2): per-token gates ``g = softmax(X W)`` over experts, ``Y = sum_i g_i E_i(X)``.
- Soft-MoA (Eq. 3-4): ``logits = X Phi`` (``Phi`` is ``[D, N*p]``); dispatch ``D`` = softmax of the
  logits over tokens, slots ``X~ = D^T X``; expert ``i`` processes slots ``i*p .. i*p+p-1``; combine
  ``C`` = softmax of the logits over slots, ``Y = C Y~``.

Each site is one module, added once: the reference code added a single MHSA-site adapter's output
twice (after MHSA and again after the FFN); a test counts contributions (docs/design.md §5).
Up projections start at zero so a fresh adapter leaves the backbone unchanged; the router/Phi is
random so gradients reach it from the first step.
"""

from __future__ import annotations

import math
from typing import Literal

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
from lookaside.adapters.ops import rows_gather, rows_linear
from lookaside.adapters.slot_index import SlotIndex
from lookaside.sites import SitePosition, TokenLayout


class MoaConfig(AdapterConfig):
    """Dense- or Soft-MoA; the paper's best: soft, 14 experts of rank 1, one slot each."""

    num_experts: int = Field(14, gt=0)
    """Number of expert adapters N."""
    rank: int = Field(1, gt=0)
    """Bottleneck width r of each expert."""
    slots_per_expert: int = Field(1, gt=0)
    """Soft-MoA slots p per expert (ignored by Dense-MoA)."""
    sites: SubLayers = ("attn",)
    """``("attn",)`` Pfeiffer, ``("attn", "ffn")`` Houlsby."""


class DenseMoaConfig(MoaConfig):
    """Dense-MoA: every expert sees every token, mixed by a per-token router."""

    variant: Literal["dense"] = "dense"
    """Fixed; names the variant in manifests."""


class SoftMoaConfig(MoaConfig):
    """Soft-MoA: experts see soft combinations (slots) of the tokens."""

    variant: Literal["soft"] = "soft"
    """Fixed; names the variant in manifests."""


class _ExpertsSite(StackedSite):
    """Stacked experts ``[S, N, D, r]`` / ``[S, N, r, D]`` and a routing matrix ``[S, D, K]``."""

    def __init__(self, dim: int, cfg: MoaConfig, router_width: int, num_slots: int) -> None:
        super().__init__(num_slots)
        n, r = cfg.num_experts, cfg.rank
        self.num_experts = n
        self.router = self.slot_param(dim, router_width)
        self.down = self.slot_param(n, dim, r)
        self.down_bias = self.slot_param(n, r)
        self.up = self.slot_param(n, r, dim)
        self.up_bias = self.slot_param(n, dim)

    def init_slot(self, index: int, generator: torch.Generator) -> None:
        """Router and down projections random (Kaiming-uniform bound), up projections zero."""
        self.clear_slot(index)
        bound = 1.0 / math.sqrt(self.down.shape[2])
        for p in (self.router, self.down):
            self.uniform_slot(p, index, bound, generator)


class DenseMoaSite(_ExpertsSite):
    """``Y = sum_i softmax(X W)_i * (gelu(X Wd_i + bd_i) Wu_i + bu_i)``."""

    def forward(self, x: Tensor, index: SlotIndex, layout: TokenLayout) -> Tensor:
        n, L, _ = x.shape
        gates = rows_linear(x, self.router, None, index).softmax(dim=-1)  # [n, L, N]
        down = rows_gather(self.down, index, n)  # [n, N, D, r]
        hidden = F.gelu(
            torch.einsum("nld,nedr->nler", x, down) + rows_gather(self.down_bias, index, n)[:, None]
        )
        # Fold the gates in before the up projection: one [n, L, N*r] x [n, N*r, D] matmul.
        weighted = (hidden * gates[..., None]).reshape(n, L, -1)
        up = rows_gather(self.up, index, n).reshape(n, -1, self.up.shape[-1])
        return torch.bmm(weighted, up) + torch.bmm(gates, rows_gather(self.up_bias, index, n))


class SoftMoaSite(_ExpertsSite):
    """Soft-MoA: dispatch softmax over tokens, combine softmax over slots."""

    def __init__(self, dim: int, cfg: MoaConfig, num_slots: int) -> None:
        super().__init__(dim, cfg, cfg.num_experts * cfg.slots_per_expert, num_slots)
        self.slots_per_expert = cfg.slots_per_expert

    def forward(self, x: Tensor, index: SlotIndex, layout: TokenLayout) -> Tensor:
        n, _, D = x.shape
        logits = rows_linear(x, self.router, None, index)  # [n, L, N*p]
        dispatch = logits.softmax(dim=1)  # over tokens
        combine = logits.softmax(dim=2)  # over slots
        slots_in = torch.bmm(dispatch.transpose(1, 2), x)  # [n, N*p, D]
        slots_in = slots_in.reshape(n, self.num_experts, self.slots_per_expert, D)
        hidden = torch.einsum("nepd,nedr->nepr", slots_in, rows_gather(self.down, index, n))
        hidden = F.gelu(hidden + rows_gather(self.down_bias, index, n)[:, :, None])
        slots_out = torch.einsum("nepr,nerd->nepd", hidden, rows_gather(self.up, index, n))
        slots_out = slots_out + rows_gather(self.up_bias, index, n)[:, :, None]
        return torch.bmm(combine, slots_out.reshape(n, -1, D))


def _make_dense(config: AdapterConfig, site: SiteContext) -> dict[SitePosition, StackedSite]:
    assert isinstance(config, DenseMoaConfig)
    return {
        f"{sub}.parallel": DenseMoaSite(  # type: ignore[misc]
            site.width, config, config.num_experts, site.num_slots
        )
        for sub in config.sites
    }


def _make_soft(config: AdapterConfig, site: SiteContext) -> dict[SitePosition, StackedSite]:
    assert isinstance(config, SoftMoaConfig)
    return {
        f"{sub}.parallel": SoftMoaSite(site.width, config, site.num_slots)  # type: ignore[misc]
        for sub in config.sites
    }


DENSE_MOA = AdapterMethod(
    name="dense_moa",
    config_cls=DenseMoaConfig,
    make_sites=_make_dense,
    summary="Dense mixture of bottleneck adapters with a per-token router",
)
SOFT_MOA = AdapterMethod(
    name="soft_moa",
    config_cls=SoftMoaConfig,
    make_sites=_make_soft,
    summary="Soft mixture of adapters: experts on soft token slots (dispatch/combine softmax)",
)
