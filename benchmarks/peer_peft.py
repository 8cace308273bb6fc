"""The peer inside the adapters benchmark: PEFT's multi-LoRA inference on the same timm ViT.

One timm ``vit_base_patch16_224`` (random init, ``img_size=(128, 512)``, ``in_chans=1``) is
converted into our backbone with :func:`lookaside.backbones.from_timm_model`, so both sides run
the same weights on the same 8 x 32 token grid. PEFT wraps that timm model with ``num_adapters``
LoRA adapters and serves a batch that mixes them per row through its ``adapter_names=`` path
(PEFT's ``_mixed_batch_forward``: one sub-batch per adapter, gathered and scattered back).

What each side adapts, made like for like: PEFT's LoRA on timm's fused ``qkv`` linear adapts q, k
and v with one update ``x A B`` (``A`` ``[D, r]``, ``B`` ``[r, 3D]``); ours adapts q and v with
``x A_q B_q`` and ``x A_v B_v``. Both are rank ``r`` per adapted projection and take the same FLOPs
per token (``4 r D``: PEFT ``D r + 3 r D``, ours ``2 r D + 2 r D``) and the same parameter count.
The peer's weights are chosen so both compute the same function: PEFT's ``B`` has its k third
zeroed, and ours loads ``A_q = A_v = A``, ``B_q = B[:D]``, ``B_v = B[2D:]``.
:func:`build_lora_peer` checks the outputs agree on a mixed batch before anything is timed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lookaside.adapters import HeadConfig
from lookaside.adapters.lora import LoraQVSite
from lookaside.backbone import VisionTransformer
from lookaside.backbones import from_timm_model
from lookaside.bank import AdapterBank

TIMM_NAME = "vit_base_patch16_224"
# Presets with a timm twin: the keyword overrides that give timm the preset's shape.
TIMM_SHAPES: dict[str, dict[str, Any]] = {
    "vit_base_patch16": {},
    "test_vit": {"embed_dim": 64, "depth": 4, "num_heads": 2},
}
PEFT_PREFIX = "p"
OURS_PREFIX = "lora"


def timm_vit(preset: str, mel: int, frames: int, seed: int = 0) -> nn.Module:
    """timm's ViT-B/16 (or the tiny preset's shape) on a ``mel x frames`` one-channel grid."""
    import timm

    if preset not in TIMM_SHAPES:
        raise ValueError(
            f"no timm twin for preset {preset!r}; the PEFT peer supports {sorted(TIMM_SHAPES)}"
        )
    torch.manual_seed(seed)
    model: nn.Module = timm.create_model(
        TIMM_NAME,
        pretrained=False,
        img_size=(mel, frames),
        in_chans=1,
        num_classes=0,
        **TIMM_SHAPES[preset],
    )
    return model.eval()


def backbone_from_timm(model: nn.Module, preset: str) -> VisionTransformer:
    """Our frozen backbone holding a copy of the timm model's weights."""
    return from_timm_model(model, f"{TIMM_NAME}:{preset}")


@dataclass
class LoraPeer:
    """PEFT's multi-LoRA model beside our bank's LoRA adapters, holding the same weights."""

    peft: nn.Module
    """``PeftModel`` over the timm ViT; adapters ``p0 .. p{n-1}``."""
    peft_names: list[str]
    ours: list[str]
    """Our adapter ids ``lora0 .. lora{n-1}`` (same order as ``peft_names``)."""
    max_abs_diff: float
    """Largest |ours - PEFT| of the pooled features on a mixed batch (fp32), before timing."""
    adapter_effect: float
    """Largest |with adapters - bare backbone| on that batch: the scale ``max_abs_diff`` is
    small against."""


def add_peer_adapters(
    timm_model: nn.Module,
    backbone: VisionTransformer,
    bank: AdapterBank,
    *,
    num_adapters: int = 8,
    rank: int = 8,
    seed: int = 0,
) -> LoraPeer:
    """Wrap ``timm_model`` with PEFT LoRA adapters and add their twins to ``bank``.

    ``backbone`` must hold ``timm_model``'s weights (:func:`backbone_from_timm`). Our adapters get
    a linear-probe-sized head (50 classes) that the peer comparison does not run.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["qkv"], lora_dropout=0.0)
    names = [f"{PEFT_PREFIX}{i}" for i in range(num_adapters)]
    peft_model: Any = get_peft_model(timm_model, config, adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, config)
    peft_model.eval()
    ours = [f"{OURS_PREFIX}{i}" for i in range(num_adapters)]
    D = backbone.cfg.embed_dim
    gen = torch.Generator().manual_seed(seed)
    device = next(backbone.parameters()).device
    with torch.no_grad():
        for i, (peft_name, our_id) in enumerate(zip(names, ours, strict=True)):
            bank.add(
                our_id,
                "lora",
                {"rank": rank, "alpha": float(rank)},
                HeadConfig(num_classes=50),
                seed=i,
            )
            stack = bank.stack_of(our_id)
            assert stack is not None
            slot = bank.entries[our_id].slot
            for j, block in enumerate(peft_model.base_model.model.blocks):
                qkv = block.attn.qkv
                # PEFT layout: lora_A.weight [r, D], lora_B.weight [3D, r].
                a = torch.randn(rank, D, generator=gen) / D**0.5
                b = torch.randn(3 * D, rank, generator=gen) * 0.02
                b[D : 2 * D] = 0.0  # k unchanged: the same function as our q/v LoRA
                qkv.lora_A[peft_name].weight.copy_(a)
                qkv.lora_B[peft_name].weight.copy_(b)
                site = stack.site(j, "attn.qkv")
                assert isinstance(site, LoraQVSite)
                site.q_a[slot].copy_(a.T)
                site.v_a[slot].copy_(a.T)
                site.q_b[slot].copy_(b[:D].T)
                site.v_b[slot].copy_(b[2 * D :].T)
    peft_model.to(device)
    diff, effect = _compare(peft_model, names, backbone, bank, ours)
    if not diff < 1e-3 * max(effect, 1e-3):
        raise AssertionError(
            f"ours and PEFT disagree on the same LoRA weights: max |diff| {diff:.3g}, "
            f"adapter effect {effect:.3g}"
        )
    return LoraPeer(peft_model, names, ours, diff, effect)


def spec_to_image(spec: Tensor) -> Tensor:
    """``[B, frames, mel]`` spectrogram -> timm's ``[B, 1, mel, frames]`` image (AST layout)."""
    return spec.transpose(1, 2).unsqueeze(1).contiguous()


def peft_forward(peft_model: nn.Module, image: Tensor, adapter_names: list[str]) -> Tensor:
    """PEFT's mixed-batch inference: pooled CLS features ``[B, D]``."""
    out: Tensor = peft_model(image, adapter_names=adapter_names)
    return out


def _compare(
    peft_model: nn.Module,
    names: list[str],
    backbone: VisionTransformer,
    bank: AdapterBank,
    ours: list[str],
) -> tuple[float, float]:
    """(max |ours - PEFT|, max |ours - bare backbone|) of pooled features on a mixed batch."""
    device = next(backbone.parameters()).device
    n = len(names)
    frames, mel = backbone.cfg.num_frames, backbone.cfg.num_mel_bins
    spec = torch.randn(n, frames, mel, generator=torch.Generator().manual_seed(1)).to(device)
    order = [(i * 3) % n for i in range(n)]  # rows in another order than the adapters
    with torch.inference_mode():
        theirs = peft_forward(peft_model, spec_to_image(spec), [names[i] for i in order])
        with bank.route([ours[i] for i in order]) as route:
            mine = backbone(spec, route)
        bare = backbone(spec)
    return float((theirs - mine).abs().max()), float((mine - bare).abs().max())
