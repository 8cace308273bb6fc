"""One frozen backbone + an adapter bank: the forward every user of the library calls.

``forward(spec, adapter_ids)`` runs one backbone pass per prompt group (one pass for any batch
without prompt tuning) in which every site applies each row's own adapter, then each row's own
head. Each pass holds its route (so the bank never reuses a slot the pass reads) and releases it
when the pass ends, even on error. Training, the service and the benchmarks all go through here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lookaside.adapters.bank import AdapterBank
from lookaside.adapters.route import index_tensor
from lookaside.backbone import VisionTransformer
from lookaside.errors import ConfigError


class MultiAdapterModel(nn.Module):
    """The shared backbone (never copied) and the bank of adapters beside it.

    The bank must be built for this backbone: same config, same device, and the same dtype unless
    the forward runs under ``torch.autocast`` (a bf16 bank beside an fp32 backbone).
    """

    def __init__(self, backbone: VisionTransformer, bank: AdapterBank) -> None:
        super().__init__()
        if bank.backbone_cfg != backbone.cfg:
            raise ConfigError(
                "the adapter bank was built for another backbone config; build it with "
                "AdapterBank.for_backbone(backbone)"
            )
        param = next(backbone.parameters())
        if not _same_device(bank.device, param.device):
            raise ConfigError(
                f"the adapter bank lives on {bank.device} but the backbone on {param.device}; "
                "build the bank with AdapterBank.for_backbone(backbone) or device="
                f"{str(param.device)!r}"
            )
        if bank.fingerprint is not None and bank.fingerprint != backbone.fingerprint():
            raise ConfigError(
                "the adapter bank was built for another backbone (fingerprint "
                f"{bank.fingerprint} != {backbone.fingerprint()}); build it with "
                "AdapterBank.for_backbone(backbone)"
            )
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
        self._check_dtype(spec)
        out: list[Tensor | None] = [None] * len(adapter_ids)
        for rows in self.bank.partition(adapter_ids):
            ids = [adapter_ids[r] for r in rows]
            sub = (
                spec
                if len(rows) == len(adapter_ids)
                else spec.index_select(0, index_tensor(rows, spec.device))
            )
            with self.bank.route(ids) as route:
                tokens, layout = self.backbone.forward_features(sub, route)
                logits = self.bank.classify(tokens, layout, ids, route=route)
            for row, row_logits in zip(rows, logits, strict=True):
                out[row] = row_logits
        return out

    def logits(self, spec: Tensor, adapter_id: str) -> Tensor:
        """``[batch, classes]`` logits of one adapter for the whole batch (training, eval)."""
        self._check_dtype(spec)
        with self.bank.route([adapter_id] * spec.shape[0]) as route:
            tokens, layout = self.backbone.forward_features(spec, route)
            logits: Tensor = route.heads[adapter_id](tokens, layout)
            return logits

    def _check_dtype(self, spec: Tensor) -> None:
        """Refuse a bank dtype the forward cannot mix (instead of a raw matmul dtype error)."""
        compute = next(self.backbone.parameters()).dtype
        if self.bank.dtype == compute:
            return
        if torch.is_autocast_enabled(spec.device.type):
            return
        raise ConfigError(
            f"the adapter bank stores {_name(self.bank.dtype)} but the backbone computes in "
            f"{_name(compute)}: run the forward under torch.autocast("
            f"{spec.device.type!r}, dtype=torch.{_name(self.bank.dtype)}) or build the bank with "
            f"dtype=torch.{_name(compute)}"
        )


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` name the same device when 0 is the current one."""
    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index == b.index:
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (
        b.index if b.index is not None else current
    )
