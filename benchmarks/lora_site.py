"""Milliseconds one LoRA site adds to one block's qkv projection: ours against PEFT's.

Whole-model clips/s on a shared 2-core machine move by far more than a LoRA site costs, so this
suite isolates the site: the block's fused qkv linear alone, then the same linear plus 8 LoRA
adapters of rank 8 mixed per row (ours through :meth:`RowRoute.add_to`, PEFT through its LoRA
``Linear`` with ``adapter_names=``), and ours with one adapter for the whole batch. The adapters
are timed without the linear (its output is computed once and handed to both sides: PEFT's base
layer returns it), so the numbers are not the difference of two large noisy times; the linear
alone is timed for scale. Each round times every variant once, back to back; medians and
quartiles over rounds. Shapes are the backbone's (ViT-B: 8 x 257 x 768).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lookaside.adapters import HeadConfig
from lookaside.backbone_config import BackboneConfig
from lookaside.bank import AdapterBank
from lookaside.sites import TokenLayout


class _QkvOnly(nn.Module):
    """A module with one ``qkv`` linear, for PEFT to inject LoRA into."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)


def lora_site_overhead(
    cfg: BackboneConfig,
    grid: tuple[int, int],
    device: torch.device,
    rounds: int,
    batch: int = 8,
    rank: int = 8,
) -> dict[str, tuple[float, float, float]]:
    """Per variant: (median ms, lower quartile, upper quartile) over rounds.

    ``linear_alone`` is the qkv linear itself; the others are the adapters' work added to it.
    """
    from peft import LoraConfig, get_peft_model

    D = cfg.embed_dim
    tokens = cfg.num_prefix_tokens + grid[0] * grid[1]
    layout = TokenLayout(num_prefix=cfg.num_prefix_tokens, num_prompts=0, grid=grid)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(batch, tokens, D, generator=gen).to(device)
    linear = nn.Linear(D, 3 * D).to(device).eval()
    bank = AdapterBank(cfg.model_copy(update={"depth": 1}), capacity=batch, device=device)
    ours = [f"lora{i}" for i in range(batch)]
    for i, adapter_id in enumerate(ours):
        bank.add(
            adapter_id,
            "lora",
            {"rank": rank, "alpha": float(rank)},
            HeadConfig(num_classes=2),
            seed=i,
        )
    with torch.no_grad():
        for p in bank.parameters():
            p.normal_(0, 0.02)
    peft_host: Any = get_peft_model(
        _QkvOnly(D), LoraConfig(r=rank, lora_alpha=rank, target_modules=["qkv"]), adapter_name="p0"
    )
    names = [f"p{i}" for i in range(batch)]
    for name in names[1:]:
        peft_host.add_adapter(name, LoraConfig(r=rank, lora_alpha=rank, target_modules=["qkv"]))
    peft_host.eval().to(device)
    peft_layer = peft_host.base_model.model.qkv
    with torch.no_grad():
        for p in peft_layer.parameters():
            p.normal_(0, 0.02)
    mixed = bank.route(ours)
    uniform = bank.route([ours[0]] * batch)
    with torch.inference_mode():
        qkv = linear(h)  # the frozen linear's output, computed once: only the adapters are timed
    # PEFT's LoRA layer runs its base layer first; hand it the same precomputed output.
    peft_layer.base_layer.forward = lambda x, *args, **kwargs: qkv

    def ours_fn(route: Any) -> Callable[[], object]:
        return lambda: route.add_to(0, "attn.qkv", h, qkv, layout)

    runs: dict[str, Callable[[], object]] = {
        "linear_alone": lambda: linear(h),
        "ours_8_mixed": ours_fn(mixed),
        "ours_1_whole_batch": ours_fn(uniform),
        "peft_8_mixed": lambda: peft_layer(h, adapter_names=names),
    }
    times = _rounds(runs, device, rounds)
    mixed.release()
    uniform.release()
    return {name: _stats(values) for name, values in times.items()}


def _rounds(
    runs: dict[str, Callable[[], object]], device: torch.device, rounds: int
) -> dict[str, list[float]]:
    """Milliseconds of each variant, one run of each per round (after one warm-up run each)."""
    times: dict[str, list[float]] = {n: [] for n in runs}
    with torch.inference_mode():
        for fn in runs.values():
            fn()
        for _ in range(rounds):
            for name, fn in runs.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[name].append(1000 * (time.perf_counter() - start))
    return times


def _stats(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return med, q1, q3
