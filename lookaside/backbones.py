"""Backbone presets and weight loading: one string names where the frozen weights come from.

Sources:
- ``timm:<model name>``: through timm (from the Hugging Face hub when online, from its cache
  otherwise), e.g. ``timm:vit_base_patch16_224.augreg_in21k`` (AV-PEA) or
  ``timm:deit_base_distilled_patch16_384`` (AST's ImageNet initialisation).
- ``hf:<repo id>``: a Hugging Face AST checkpoint, e.g.
  ``hf:MIT/ast-finetuned-audioset-10-10-0.4593``.
- ``file:<path>`` (or a bare path ending in ``.safetensors``): a local safetensors file in our
  key layout (written by :func:`save_backbone`) or in the Hugging Face AST layout.
- ``random:<preset>``: a preset from :data:`PRESETS` with deterministic random weights, for tests
  and the offline demo. Never used silently in place of a real source.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lookaside.backbone import VisionTransformer
from lookaside.backbone_config import BackboneConfig
from lookaside.backbone_convert import (
    ast_config,
    checkpoint_filter_fn,
    convert_ast_state_dict,
    timm_config,
)
from lookaside.backbone_registry import build_backbone
from lookaside.errors import ConfigError, WeightLoadError

log = logging.getLogger(__name__)

PRESETS: dict[str, BackboneConfig] = {
    # ViT-B/16 on a 5 s ESC-50 clip: 128 mel x 512 frames -> 8 x 32 = 256 tokens.
    "vit_base_patch16": BackboneConfig(name="vit_base_patch16", num_frames=512),
    "deit_base_distilled_patch16": BackboneConfig(
        name="deit_base_distilled_patch16", distilled=True, num_frames=512
    ),
    "ast_base_stride10": BackboneConfig(
        name="ast_base_stride10", distilled=True, patch_stride=(10, 10), norm_eps=1e-12
    ),
    # ViT-B/16 with its RGB kernel at 224 x 224 (timm vit_base_patch16_224.augreg_in21k, AV-PEA's
    # backbone): frames use the RGB kernel, spectrograms the kernel summed over RGB.
    "vit_base_patch16_224": BackboneConfig(
        name="vit_base_patch16_224", in_chans=3, num_mel_bins=224, num_frames=224
    ),
    # Tiny configs for tests and the offline demo (timm's test_vit shape).
    "test_vit": BackboneConfig(
        name="test_vit", embed_dim=64, depth=4, num_heads=2, num_mel_bins=128, num_frames=128
    ),
    "test_deit": BackboneConfig(
        name="test_deit", embed_dim=64, depth=4, num_heads=2, distilled=True, num_frames=128
    ),
    # Tiny two-stream backbone (RGB kernel, 48 x 48 frames -> 3 x 3 tokens) for AV tests.
    "test_vit_av": BackboneConfig(
        name="test_vit_av",
        embed_dim=64,
        depth=4,
        num_heads=2,
        in_chans=3,
        num_mel_bins=48,
        num_frames=48,
        image_size=(48, 48),
    ),
}

_CONFIG_KEY = "lookaside_backbone_config"
_SOURCE_KEY = "lookaside_backbone_source"


def build_random(preset: str | BackboneConfig, seed: int = 0) -> VisionTransformer:
    """A backbone with deterministic random weights (tests and demos only)."""
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    model = build_backbone(cfg, f"random:{cfg.name}:{seed}")
    if seed:
        model._init_random(seed)
    return model


def from_timm_model(model: torch.nn.Module, name: str) -> VisionTransformer:
    """Convert an instantiated timm ViT (any weights) into our frozen backbone."""
    cfg = timm_config(model, name)
    backbone = build_backbone(cfg, f"timm:{name}")
    backbone.load_weights(checkpoint_filter_fn(model.state_dict(), cfg))
    return backbone


def from_ast_state_dict(
    state_dict: dict[str, torch.Tensor], hf_config: dict[str, Any], source: str
) -> VisionTransformer:
    """Build our backbone from a Hugging Face AST state dict and its ``config.json``."""
    cfg = ast_config(hf_config, name=source.split(":", 1)[-1])
    backbone = build_backbone(cfg, source)
    backbone.load_weights(convert_ast_state_dict(state_dict))
    return backbone


def _load_timm(name: str) -> VisionTransformer:
    import timm  # heavy import, only when asked for

    try:
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as exc:  # timm raises many types (RuntimeError, OSError, HTTP errors)
        raise WeightLoadError(
            f"could not load timm model {name!r}: {exc}. Check the name with "
            "timm.list_models(pretrained=True); offline, pre-download it into the Hugging Face "
            "cache or export it with save_backbone() and load it as 'file:<path>'"
        ) from exc
    return from_timm_model(model, name)


def _load_hf_ast(repo: str) -> VisionTransformer:
    from huggingface_hub import hf_hub_download

    try:
        config_path = hf_hub_download(repo, "config.json")
        weights_path = hf_hub_download(repo, "model.safetensors")
    except Exception as exc:  # network, auth, missing file: one message with the fix
        raise WeightLoadError(
            f"could not fetch {repo!r} from the Hugging Face hub: {exc}. Offline, set "
            "HF_HUB_OFFLINE=1 with the files in the cache, or use 'file:<path>'"
        ) from exc
    hf_config = json.loads(Path(config_path).read_text())
    return from_ast_state_dict(_read_safetensors(Path(weights_path)), hf_config, f"hf:{repo}")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


def _load_file(path: Path) -> VisionTransformer:
    if not path.is_file():
        raise WeightLoadError(f"backbone weights file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:
        raise WeightLoadError(f"{str(path)!r} is not a safetensors file: {exc}") from exc
    state = _read_safetensors(path)
    if _CONFIG_KEY in metadata:
        cfg = BackboneConfig.model_validate_json(metadata[_CONFIG_KEY])
        backbone = build_backbone(cfg, metadata.get(_SOURCE_KEY, f"file:{path.name}"))
        backbone.load_weights(state)
        return backbone
    if any(k.startswith(("audio_spectrogram_transformer.", "embeddings.")) for k in state):
        config_path = path.with_name("config.json")
        if not config_path.is_file():
            raise WeightLoadError(
                f"{str(path)!r} holds AST weights: put its Hugging Face config.json beside it"
            )
        return from_ast_state_dict(state, json.loads(config_path.read_text()), f"file:{path.name}")
    raise WeightLoadError(
        f"{str(path)!r} has no Lookaside backbone config in its metadata and is not an AST "
        "checkpoint; write it with lookaside.backbones.save_backbone()"
    )


def save_backbone(backbone: VisionTransformer, path: str | Path) -> None:
    """Write a backbone as safetensors with its config in the metadata (loadable offline)."""
    metadata = {
        _CONFIG_KEY: backbone.cfg.model_dump_json(),
        _SOURCE_KEY: backbone.source,
        "format": "pt",
    }
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    save_file(state, str(path), metadata=metadata)


def load_backbone(
    source: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> VisionTransformer:
    """Load a frozen backbone from ``source`` (see the module docstring for the forms)."""
    kind, _, rest = source.partition(":")
    if kind == "timm":
        backbone = _load_timm(rest)
    elif kind == "hf":
        backbone = _load_hf_ast(rest)
    elif kind == "file":
        backbone = _load_file(Path(rest))
    elif kind == "random":
        name, _, seed = rest.partition(":")
        if name not in PRESETS:
            raise ConfigError(f"unknown backbone preset {name!r}; presets: {', '.join(PRESETS)}")
        backbone = build_random(name, int(seed or 0))
    elif source.endswith(".safetensors"):
        backbone = _load_file(Path(source))
    else:
        raise ConfigError(
            f"unknown backbone source {source!r}: use 'timm:<model name>', 'hf:<repo id>', "
            f"'file:<path.safetensors>' or 'random:<preset>' (presets: {', '.join(PRESETS)})"
        )
    log.info(
        "backbone %s: %s, %.1fM params, fingerprint %s",
        source,
        backbone.cfg.name,
        backbone.num_params / 1e6,
        backbone.fingerprint(),
    )
    return backbone.to(device=device, dtype=dtype)
