"""One frozen backbone + an adapter bank: the forward every user of the library calls.

``forward(spec, adapter_ids)`` runs one backbone pass per prompt-length group (one pass for any
batch without prompt tuning) in which every site applies each row's own adapter, then each row's
own head. Training, the service and the benchmarks all go through here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lookaside.adapters.bank import AdapterBank
from lookaside.backbone import VisionTransformer
from lookaside.errors import ConfigError


class MultiAdapterModel(nn.Module):
    """The shared backbone (never copied) and the bank of adapters beside it."""

    def __init__(self, backbone: VisionTransformer, bank: AdapterBank) -> None:
        super().__init__()
        if bank.backbone_cfg != backbone.cfg:
            raise ConfigError("the adapter bank was built for another backbone config")
        self.backbone = backbone
        self.bank = bank

    def forward(self, spec: Tensor, adapter_ids: Sequence[str | None]) -> list[Tensor | None]:
        """Per-row logits (None for rows routed to no adapter).

        Args:
            spec: ``[batch, frames, mel]`` normalised fbank; all rows share one frame count.
            adapter_ids: one adapter id (or None) per row.
        """
        if len(adapter_ids) != spec.shape[0]:
            raise ConfigError(f"{len(adapter_ids)} adapter ids for a batch of {spec.shape[0]} rows")
        out: list[Tensor | None] = [None] * len(adapter_ids)
        for rows in self.bank.partition(adapter_ids):
            ids = [adapter_ids[r] for r in rows]
            sub = (
                spec
                if len(rows) == len(adapter_ids)
                else spec[torch.tensor(rows, device=spec.device)]
            )
            tokens, layout = self.backbone.forward_features(sub, self.bank.route(ids))
            for row, logits in zip(rows, self.bank.classify(tokens, layout, ids), strict=True):
                out[row] = logits
        return out

    def logits(self, spec: Tensor, adapter_id: str) -> Tensor:
        """``[batch, classes]`` logits of one adapter for the whole batch (training, eval)."""
        tokens, layout = self.backbone.forward_features(
            spec, self.bank.route([adapter_id] * spec.shape[0])
        )
        head: nn.Module = self.bank.head(adapter_id)
        return head(tokens, layout)
