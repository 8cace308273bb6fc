"""The per-adapter classification head (class counts differ, so every adapter has its own)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from lookaside.sites import TokenLayout


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


class AdapterHead(nn.Module):
    """LayerNorm + Linear, as AST's MLP head; one per adapter (class counts differ)."""

    def __init__(self, cfg: HeadConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Linear(embed_dim, cfg.num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def pool(self, tokens: Tensor, layout: TokenLayout) -> Tensor:
        """``[n, L, D]`` -> ``[n, D]`` by the configured pooling."""
        if self.cfg.pool == "cls":
            return tokens[:, : layout.num_prefix].mean(dim=1)
        return tokens[:, layout.num_special :].mean(dim=1)

    def forward(self, tokens: Tensor, layout: TokenLayout) -> Tensor:
        # The bank may store adapters in another dtype than the backbone's output (bf16 bank).
        return self.fc(self.norm(self.pool(tokens, layout).to(self.fc.weight.dtype)))

    def probabilities(self, logits: Tensor) -> Tensor:
        """Softmax, or per-class sigmoid for multi-label heads."""
        return logits.sigmoid() if self.cfg.multi_label else logits.softmax(dim=-1)
