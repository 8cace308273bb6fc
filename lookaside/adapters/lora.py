"""LoRA on the query and value projections (Hu et al., 2022).

``q <- q + (alpha / r) * h A_q B_q`` and likewise for v, through the ``attn.qkv`` site. A is
Kaiming-uniform random and B zero, as in the LoRA paper (the public AST code had it reversed:
docs/design.md §5), so a fresh adapter leaves the backbone unchanged but still receives gradients.

Only the q and v thirds of the fused ``[n, L, 3D]`` qkv change, so the route lets this site add
into those column slices itself (:meth:`LoraQVSite.add_into`): one ``[D, 2r]`` down projection,
then the two up projections accumulate straight into ``qkv[..., :D]`` and ``qkv[..., 2D:]``
(``addmm_``/``baddbmm_`` on strided views). No zero-padded ``[n, L, 3D]`` delta is built
(about 1 GB of memory traffic per ViT-B batch-8 forward).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from lookaside.adapters.base import AdapterConfig, AdapterMethod, SiteContext, StackedSite
from lookaside.adapters.slot_index import SlotIndex
from lookaside.sites import SitePosition, TokenLayout


class LoraConfig(AdapterConfig):
    """LoRA on q and v."""

    rank: int = Field(8, gt=0)
    """Rank r of each update."""
    alpha: float = Field(8.0, gt=0)
    """Scaling numerator: updates are multiplied by alpha / r."""


class LoraQVSite(StackedSite):
    """Adds ``[dq, 0, dv]`` to the fused qkv projection (only the q and v columns are written)."""

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

    def _down(self, x: Tensor, index: SlotIndex, dtype: torch.dtype) -> Tensor:
        """``scaling * x [A_q | A_v]``: ``[n, L, 2r]``, one read of ``x`` for both updates."""
        a = torch.cat([index.take(self.q_a), index.take(self.v_a)], dim=-1).to(dtype)
        x = x.to(dtype)
        if index.uniform is not None:
            h = (x.reshape(-1, x.shape[-1]) @ a).view(*x.shape[:-1], a.shape[-1])
        else:
            h = torch.bmm(x, a)
        return h * self.scaling

    def _ups(self, index: SlotIndex, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        return index.take(self.q_b).to(dtype), index.take(self.v_b).to(dtype)

    def deltas(self, x: Tensor, index: SlotIndex) -> tuple[Tensor, Tensor]:
        """``(dq, dv)``, each ``[n, L, D]``, already scaled by ``alpha / r``."""
        dtype = torch.promote_types(x.dtype, self.q_a.dtype)
        h = self._down(x, index, dtype)
        r = self.q_a.shape[-1]
        qb, vb = self._ups(index, dtype)
        return h[..., :r] @ qb, h[..., r:] @ vb

    def forward(self, x: Tensor, index: SlotIndex, layout: TokenLayout) -> Tensor:
        """The site's whole contribution ``[dq, 0, dv]`` (``[n, L, 3D]``).

        This is the site's contract (and what plain references compare against); the route calls
        :meth:`add_into` instead, which never builds this padded tensor.
        """
        dq, dv = self.deltas(x, index)
        return torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)

    def add_into(
        self, out: Tensor, x: Tensor, index: SlotIndex, rows: Tensor | None, inplace: bool
    ) -> Tensor:
        """``out`` (``[B, L, 3D]`` qkv) plus this site's contribution for ``rows`` (all if None).

        Semantics: ``result[rows[i]] = out[rows[i]] + forward(x)[i]``; ``x`` holds only those
        rows. In place when ``inplace`` (inference): the up projections accumulate into the q
        and v column views of ``out``. Otherwise (autograd) a new tensor, still without the zero
        padding.
        """
        D = out.shape[-1] // 3
        if not inplace:
            dq, dv = self.deltas(x, index)
            q, k, v = out[..., :D], out[..., D : 2 * D], out[..., 2 * D :]
            if rows is None:
                return torch.cat([q + dq.to(out.dtype), k, v + dv.to(out.dtype)], dim=-1)
            return torch.cat(
                [q.index_add(0, rows, dq.to(out.dtype)), k, v.index_add(0, rows, dv.to(out.dtype))],
                dim=-1,
            )
        q, v = out[..., :D], out[..., 2 * D :]
        if rows is not None:  # a subset of the batch: per-row deltas, then one scatter each
            dq, dv = self.deltas(x, index)
            q.index_add_(0, rows, dq.to(out.dtype))
            v.index_add_(0, rows, dv.to(out.dtype))
            return out
        h = self._down(x, index, out.dtype)
        r = self.q_a.shape[-1]
        qb, vb = self._ups(index, out.dtype)
        if index.uniform is not None and out.is_contiguous():
            # One GEMM per projection over all tokens, accumulated into the column views.
            n_tok = h.shape[0] * h.shape[1]
            flat = out.view(n_tok, 3, D)
            hq = h.view(n_tok, 2 * r)
            flat[:, 0].addmm_(hq[:, :r], qb)
            flat[:, 2].addmm_(hq[:, r:], vb)
        elif index.uniform is not None:
            q.add_(h[..., :r] @ qb)
            v.add_(h[..., r:] @ vb)
        else:
            q.baddbmm_(h[..., :r], qb)
            v.baddbmm_(h[..., r:], vb)
        return out


def _make_sites(config: AdapterConfig, site: SiteContext) -> dict[SitePosition, StackedSite]:
    assert isinstance(config, LoraConfig)
    return {"attn.qkv": LoraQVSite(site.width, config.rank, config.alpha, site.num_slots)}


LORA = AdapterMethod(
    name="lora",
    config_cls=LoraConfig,
    make_sites=_make_sites,
    summary="LoRA on the query and value projections",
)
