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
import torch.nn.functional as F
from torch import Tensor

from lookaside.backbone_config import BackboneConfig
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

    Heads are dropped and the input conv adapted to ``cfg.in_chans`` (an RGB kernel is kept as is
    for ``in_chans=3``: the backbone derives the spectrogram's 1-channel kernel from it).
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


def _is_identity(module: object) -> bool:
    """An absent optional part: timm uses ``nn.Identity`` (or None) for switched-off layers."""
    return module is None or isinstance(module, torch.nn.Identity)


def _is_exact_gelu(act: object) -> bool:
    """True when ``act`` computes exact (erf) GELU, whatever class implements it.

    Probed numerically rather than by class: timm has its own ``GELU`` class, and the look-alikes
    (``GELUTanh``, ``QuickGELU``) differ from exact GELU by 1e-4 to 2e-2, enough to shift every
    token of a 12-block ViT.
    """
    if not isinstance(act, torch.nn.Module):
        return False
    probe = torch.linspace(-6.0, 6.0, 241)
    try:
        with torch.no_grad():
            out = act(probe)
    except Exception:  # an activation that cannot run on a 1-D tensor is not GELU either
        return False
    return isinstance(out, Tensor) and torch.allclose(out, F.gelu(probe), atol=1e-7, rtol=0)


def _act_name(act: object) -> str:
    """``GELUTanh``, ``QuickGELU``, ``GELU(approximate='tanh')``, ..."""
    approximate = getattr(act, "approximate", "none")
    suffix = f"(approximate={approximate!r})" if approximate != "none" else ""
    return type(act).__name__ + suffix


def _block_features(block: Any, embed_dim: int) -> dict[str, bool]:
    """Per-block parts of a timm ViT that Lookaside's
    :class:`~lookaside.backbone_blocks.Block` lacks."""
    attn: Any = getattr(block, "attn", None)
    mlp: Any = getattr(block, "mlp", None)
    standard_mlp = type(mlp).__name__ == "Mlp" and all(
        hasattr(mlp, k) for k in ("fc1", "act", "fc2")
    )
    standard_attn = all(hasattr(attn, k) for k in ("qkv", "proj", "num_heads"))
    linears = [getattr(attn, "proj", None), getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)]
    norms = [getattr(block, "norm1", None), getattr(block, "norm2", None)]
    return {
        f"block type {type(block).__name__}": type(block).__name__ != "Block",
        "non-standard attention (no fused qkv)": not standard_attn,
        f"gated or non-standard MLP ({type(mlp).__name__})": not standard_mlp,
        "layer scale (init_values)": not _is_identity(getattr(block, "ls1", None))
        or not _is_identity(getattr(block, "ls2", None)),
        "q/k norm (qk_norm)": not _is_identity(getattr(attn, "q_norm", None))
        or not _is_identity(getattr(attn, "k_norm", None)),
        "attention output norm (scale_attn_norm)": not _is_identity(getattr(attn, "norm", None)),
        "gated attention (gated)": getattr(attn, "gate", None) is not None,
        "attention width other than embed_dim (attn_head_dim)": standard_attn
        and attn.qkv.out_features != 3 * embed_dim,
        "MLP norm (scale_mlp_norm)": not _is_identity(getattr(mlp, "norm", None)),
        "linear layers without bias (proj_bias=False)": any(
            isinstance(m, torch.nn.Linear) and m.bias is None for m in linears
        ),
        "a block norm other than LayerNorm (norm_layer)": not all(
            isinstance(n, torch.nn.LayerNorm) for n in norms
        ),
        f"MLP activation {_act_name(getattr(mlp, 'act', None))} (not exact GELU)": standard_mlp
        and not _is_exact_gelu(mlp.act),
    }


def timm_config(model: torch.nn.Module, name: str) -> BackboneConfig:
    """Our backbone config from an instantiated timm ``VisionTransformer`` (or DeiT distilled).

    Refuses, with a :class:`WeightLoadError` naming the feature, architectures our block does not
    reproduce (another MLP activation than exact GELU, no class token, layer scale, register
    tokens, q/k norm, ...) rather than loading them and computing something else.
    """
    pe: Any = getattr(model, "patch_embed", None)
    blocks: Any = getattr(model, "blocks", None)
    if pe is None or blocks is None or len(blocks) == 0:
        raise WeightLoadError(f"timm model {name!r} is not a ViT (no patch_embed/blocks)")
    embed_dim = int(model.embed_dim)  # type: ignore[arg-type]
    unsupported = {
        "no class token (class_token=False)": getattr(model, "cls_token", None) is None,
        "no learned position embedding (pos_embed='none')": not isinstance(
            getattr(model, "pos_embed", None), torch.nn.Parameter
        ),
        "register tokens (reg_tokens)": getattr(model, "num_reg_tokens", 0) > 0,
        "no_embed_class": bool(getattr(model, "no_embed_class", False)),
        "non-square patches": len(set(pe.patch_size)) != 1,
        "patch norm (embed_norm_layer)": not _is_identity(getattr(pe, "norm", None)),
        "pre-norm (pre_norm)": not _is_identity(getattr(model, "norm_pre", None)),
        "fc_norm": not _is_identity(getattr(model, "fc_norm", None)),
        "a final norm other than LayerNorm (final_norm, norm_layer)": not isinstance(
            getattr(model, "norm", None), torch.nn.LayerNorm
        ),
    }
    for block in blocks:
        for feature, present in _block_features(block, embed_dim).items():
            unsupported[feature] = unsupported.get(feature, False) or present
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise WeightLoadError(
            f"timm model {name!r} has what Lookaside's ViT does not reproduce: {'; '.join(bad)}. "
            "Use a plain timm ViT or DeiT (exact GELU act_layer='gelu', class token, learned "
            "position embedding, LayerNorm, no layer scale)"
        )
    block = blocks[0]
    img_h, img_w = pe.img_size
    patch = pe.patch_size[0]
    stride = tuple(pe.proj.stride)
    return BackboneConfig(
        name=name,
        embed_dim=embed_dim,
        depth=len(blocks),
        num_heads=int(block.attn.num_heads),
        mlp_ratio=block.mlp.fc1.out_features / embed_dim,
        patch_size=patch,
        patch_stride=(int(stride[0]), int(stride[1])),
        in_chans=int(pe.proj.in_channels),  # an ImageNet ViT keeps its RGB kernel (AV-PEA)
        num_mel_bins=int(img_h),
        num_frames=int(img_w),
        image_size=(int(img_h), int(img_w)),
        distilled=getattr(model, "dist_token", None) is not None,
        qkv_bias=block.attn.qkv.bias is not None,
        norm_eps=float(getattr(model.norm, "eps", 1e-6)),
    )
