"""The per-adapter classification head (class counts differ, so every adapter has its own)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from lookaside.sites import TokenLayout

HEAD_INIT_STD = 0.02
"""Std of the truncated-normal init of the head's weight (timm's ``head`` init)."""


class HeadConfig(BaseModel):
    """The per-adapter classification head: LayerNorm + Linear on pooled tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_classes: int = Field(gt=0)
    """Output logits."""
    pool: Literal["cls", "mean"] = "cls"
    """``cls``: mean of the prefix tokens (CLS, or CLS and DIST as AST does); ``mean``: of the
    patch tokens."""
    multi_label: bool = False
    """Sigmoid per class (multi-label) instead of a softmax over classes."""

    def shapes(self, embed_dim: int) -> dict[str, tuple[int, ...]]:
        """Tensor names (as in the head's state dict) and shapes, by arithmetic (no allocation)."""
        return {
            "norm.weight": (embed_dim,),
            "norm.bias": (embed_dim,),
            "fc.weight": (self.num_classes, embed_dim),
            "fc.bias": (self.num_classes,),
        }


class AdapterHead(nn.Module):
    """LayerNorm + Linear, as AST's MLP head; one per adapter (class counts differ).

    Built without touching the global random generator (the modules are created on the ``meta``
    device and then materialised): a fresh head's weights come from ``generator`` alone, so the
    same seed gives the same head whatever else the process drew. A bank reserving a slot builds
    it with ``init=False``: its load writes every value (or initialises it from a seed).
    """

    def __init__(
        self,
        cfg: HeadConfig,
        embed_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
        init: bool = True,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        # built on ``meta`` by argument (not under a ``torch.device`` mode, which would dispatch
        # every op of the modules' own init through Python: half the cost of a bank load)
        self.norm = nn.LayerNorm(embed_dim, dtype=dtype, device="meta")
        self.fc = nn.Linear(embed_dim, cfg.num_classes, dtype=dtype, device="meta")
        where = torch.device(device if device is not None else "cpu")
        for module in (self.norm, self.fc):  # what to_empty does, without its per-op dispatch
            for name, param in list(module.named_parameters(recurse=False)):
                fresh = torch.empty(param.shape, dtype=param.dtype, device=where)
                setattr(module, name, nn.Parameter(fresh, requires_grad=param.requires_grad))
        if init:  # ``init=False``: uninitialised memory, for a head about to be loaded
            self.reset_parameters(generator if generator is not None else torch.Generator())

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Fresh init: identity LayerNorm, truncated-normal weight (drawn on the CPU from
        ``generator``, then copied to the head's device), zero bias."""
        with torch.no_grad():
            self.norm.weight.fill_(1.0)
            self.norm.bias.zero_()
            weight = torch.empty(self.fc.weight.shape)
            nn.init.trunc_normal_(weight, std=HEAD_INIT_STD, generator=generator)
            self.fc.weight.copy_(weight)
            self.fc.bias.zero_()

    def pool(self, tokens: Tensor, layout: TokenLayout) -> Tensor:
        """``[n, L, D]`` -> ``[n, D]`` by the configured pooling."""
        if self.cfg.pool == "cls":
            return tokens[:, : layout.num_prefix].mean(dim=1)
        return tokens[:, layout.num_special :].mean(dim=1)

    def forward(self, tokens: Tensor, layout: TokenLayout) -> Tensor:
        # The bank may store adapters in another dtype than the backbone's output (bf16 bank).
        return self.fc(self.norm(self.pool(tokens, layout).to(self.fc.weight.dtype)))


def scores_of(logits: Tensor, *, multi_label: bool) -> Tensor:
    """Scores from a head's logits, in fp32: a sigmoid per class for a multi-label head, a softmax
    over the classes otherwise (the one place the service turns logits into scores)."""
    logits = logits.float()
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)
