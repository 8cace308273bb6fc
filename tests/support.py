"""Helpers shared by several test modules."""

from __future__ import annotations

import torch
from transformers import ASTConfig, ASTModel

from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.model import MultiAdapterModel


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


def randomise_module(model: torch.nn.Module, seed: int) -> None:
    """Random values in every parameter of a reference model (zero-initialised tokens and
    biases would hide key mix-ups in weight conversion)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def tiny_ast(seed: int) -> tuple[ASTConfig, ASTModel]:
    """A one-block transformers ``ASTModel`` (width 32, 32 mel x 64 frames), random weights."""
    cfg = ASTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_length=64,
        num_mel_bins=32,
    )
    model = ASTModel(cfg).eval()
    randomise_module(model, seed)
    return cfg, model


def bank_bookkeeping(bank: AdapterBank) -> dict[str, object]:
    """Everything the bank tracks, as plain values: equal before and after a balanced sequence
    of adds, routes and removes when nothing leaked (slots, refcounts, heads, parameters)."""
    with bank._lock:
        return {
            "ids": sorted(bank.entries),
            "stacks": sorted(bank.stacks.keys()),
            "heads": len(bank.heads),
            "slots": {
                key: (s.capacity, sorted(s.free), list(s.refs), sorted(s.reserved), s.live)
                for key, s in bank._slots.items()
            },
            "retired": sum(len(s.retired) for s in bank._slots.values()),
            "reservations": len(bank._reservations),
            "collected": len(bank._collected),
            "params": sum(p.numel() for p in bank.parameters()),
        }


def alone_logits(
    backbone: VisionTransformer, ckpt: AdapterCheckpoint, row: torch.Tensor
) -> torch.Tensor:
    """The plain reference: ``ckpt`` alone on one row, in a bank of its own (no engine or
    service code)."""
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    ckpt.load_into(bank, "ref")
    with torch.inference_mode():
        (logits,) = MultiAdapterModel(backbone, bank).eval()(row[None], ["ref"])
    assert logits is not None
    return logits
