"""Helpers shared by several test modules."""

from __future__ import annotations

import torch

from lookaside.adapters.bank import AdapterBank


def randomise(bank: AdapterBank, adapter_id: str, seed: int) -> None:
    """Non-zero values in every tensor of one adapter (fresh up-projections are zero, which
    would hide routing and loading bugs)."""
    gen = torch.Generator().manual_seed(seed)
    stack = bank.stack_of(adapter_id)
    slot = bank.entries[adapter_id].slot
    with torch.no_grad():
        if stack is not None:
            for _, site in stack.named_sites():
                for p in site.parameters(recurse=False):
                    p[slot].copy_(torch.randn(p.shape[1:], generator=gen) * 0.2)
        for p in bank.head(adapter_id).parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
