"""Pure functions that turn foreign ViT weights into our (timm) key layout.

Following timm's ``checkpoint_filter_fn``: each conversion is a small function of a state dict with
its own test, and loading stays strict, so a key that does not convert is an error, not a silently
random weight.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lookaside.backbone import BackboneConfig
from lookaside.errors import WeightLoadError

# Keys of classification heads and other parts a frozen feature backbone does not keep.
_DROPPED = re.compile(r"^(head|head_dist|fc_norm|pre_logits)\b|^classifier\.")

_AST_GLOBAL = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_AST_QKV = {
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
}
_AST_LAYER = {
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """Patch-conv kernel ``[D, C, k, k]`` for ``in_chans`` inputs.

    RGB -> 1 channel sums the colour kernels, so a grey image gives the same response as the
    original net on that image repeated on R, G and B.
    """
    source = weight.shape[1]
    if source == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    if source == 1:
        return weight.repeat(1, in_chans, 1, 1) / in_chans
    raise WeightLoadError(f"cannot adapt a {source}-channel patch kernel to {in_chans} channels")


def checkpoint_filter_fn(
    state_dict: Mapping[str, Tensor], cfg: BackboneConfig
) -> dict[str, Tensor]:
    """timm-keyed ViT/DeiT state dict -> our keys for ``cfg``.

    Heads are dropped and the input conv adapted to ``cfg.in_chans``.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if _DROPPED.match(key):
            continue
        if key == "patch_embed.proj.weight":
            value = adapt_input_conv(value, cfg.in_chans)
        out[key] = value
    return out


def convert_ast_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face AST keys -> our timm keys.

    Two layouts exist: the hub checkpoints' (``encoder.layer.N.attention.attention.query``, as in
    ``MIT/ast-finetuned-audioset-10-10-0.4593``) and transformers 5's
    (``layers.N.attention.q_proj``).
    HF keeps q, k and v apart; timm concatenates them into one ``qkv`` projection in that order.
    """
    sd = {k.removeprefix("audio_spectrogram_transformer."): v for k, v in state_dict.items()}
    out: dict[str, Tensor] = {}
    layer = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key in _AST_GLOBAL:
            out[_AST_GLOBAL[key]] = value
            continue
        if key.startswith("classifier."):
            continue
        m = layer.match(key)
        if m is None:
            raise WeightLoadError(f"unexpected key in AST checkpoint: {key!r}")
        i, module, param = int(m.group(1)), m.group(2), m.group(3)
        if module in _AST_QKV:
            qkv.setdefault((i, param), {})[_AST_QKV[module]] = value
        elif module in _AST_LAYER:
            out[f"blocks.{i}.{_AST_LAYER[module]}.{param}"] = value
        else:
            raise WeightLoadError(f"unexpected key in AST checkpoint: {key!r}")
    for (i, param), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise WeightLoadError(f"layer {i}: incomplete q/k/v {param} in AST checkpoint")
        out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def ast_config(hf_config: Mapping[str, Any], name: str = "ast") -> BackboneConfig:
    """Our backbone config from a Hugging Face ``ASTConfig`` (its ``config.json`` as a dict)."""
    if hf_config.get("hidden_act", "gelu") != "gelu":
        raise WeightLoadError(f"unsupported AST activation {hf_config['hidden_act']!r}")
    hidden = int(hf_config.get("hidden_size", 768))
    return BackboneConfig(
        name=name,
        embed_dim=hidden,
        depth=int(hf_config.get("num_hidden_layers", 12)),
        num_heads=int(hf_config.get("num_attention_heads", 12)),
        mlp_ratio=int(hf_config.get("intermediate_size", 3072)) / hidden,
        patch_size=int(hf_config.get("patch_size", 16)),
        patch_stride=(
            int(hf_config.get("frequency_stride", 10)),
            int(hf_config.get("time_stride", 10)),
        ),
        in_chans=1,
        num_mel_bins=int(hf_config.get("num_mel_bins", 128)),
        num_frames=int(hf_config.get("max_length", 1024)),
        distilled=True,
        qkv_bias=bool(hf_config.get("qkv_bias", True)),
        norm_eps=float(hf_config.get("layer_norm_eps", 1e-12)),
    )


def timm_config(model: torch.nn.Module, name: str) -> BackboneConfig:
    """Our backbone config from an instantiated timm ``VisionTransformer`` (or DeiT distilled).

    Refuses architectures our block does not reproduce (layer scale, register tokens, q/k norm,
    class token without position embedding), rather than loading them wrongly.
    """
    pe: Any = getattr(model, "patch_embed", None)
    blocks: Any = getattr(model, "blocks", None)
    if pe is None or blocks is None:
        raise WeightLoadError(f"timm model {name!r} is not a ViT (no patch_embed/blocks)")
    block = blocks[0]
    unsupported = {
        "layer scale": not isinstance(
            getattr(block, "ls1", torch.nn.Identity()), torch.nn.Identity
        ),
        "register tokens": getattr(model, "num_reg_tokens", 0) > 0,
        "q/k norm": not isinstance(
            getattr(block.attn, "q_norm", torch.nn.Identity()), torch.nn.Identity
        ),
        "no_embed_class": bool(getattr(model, "no_embed_class", False)),
        "patch norm": not isinstance(getattr(pe, "norm", torch.nn.Identity()), torch.nn.Identity),
        "pre-norm": not isinstance(
            getattr(model, "norm_pre", torch.nn.Identity()), torch.nn.Identity
        ),
        "fc_norm": not isinstance(
            getattr(model, "fc_norm", torch.nn.Identity()), torch.nn.Identity
        ),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise WeightLoadError(
            f"timm model {name!r} uses {', '.join(bad)}, which Lookaside's ViT lacks"
        )
    img_h, img_w = pe.img_size
    patch = pe.patch_size[0]
    stride = tuple(pe.proj.stride)
    embed_dim = int(model.embed_dim)  # type: ignore[arg-type]
    return BackboneConfig(
        name=name,
        embed_dim=embed_dim,
        depth=len(blocks),
        num_heads=int(block.attn.num_heads),
        mlp_ratio=block.mlp.fc1.out_features / embed_dim,
        patch_size=patch,
        patch_stride=(int(stride[0]), int(stride[1])),
        in_chans=1,
        num_mel_bins=int(img_h),
        num_frames=int(img_w),
        distilled=getattr(model, "dist_token", None) is not None,
        qkv_bias=block.attn.qkv.bias is not None,
        norm_eps=float(getattr(model.norm, "eps", 1e-6)),
    )
