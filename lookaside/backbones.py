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

:data:`DEFAULT_BACKBONE` is the one default of ``lookaside-serve``, ``lookaside-train`` and
docker-compose. A hub source that is neither cached nor reachable fails in seconds with the fix
(:func:`check_available`), not after a minute of download retries.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
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

DEFAULT_BACKBONE = "timm:vit_base_patch16_224.augreg_in21k"
"""The default backbone everywhere: ViT-B/16 supervised on ImageNet-21K. It serves audio (its RGB
patch kernel summed for spectrograms) and AV-PEA (the RGB kernel kept for frames), so adapters of
every method trained on the default load on a server started with the default."""
HUB_CONNECT_TIMEOUT_S = 3.0
"""How long :func:`check_available` tries to reach the hub (or the proxy) before calling it
unreachable."""

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
    check_available(source)
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
        "backbone %s@%s loaded (%s, %.1fM params)",
        source,
        backbone.fingerprint(),
        backbone.cfg.name,
        backbone.num_params / 1e6,
    )
    return backbone.to(device=device, dtype=dtype)


def _hub_files(source: str) -> tuple[str, list[str]] | None:
    """(hub repo, files any one of which suffices) of a ``timm:`` / ``hf:`` source, else None."""
    kind, _, rest = source.partition(":")
    if kind == "hf":
        return rest, ["model.safetensors"]
    if kind != "timm":
        return None
    from timm.models import get_pretrained_cfg  # heavy import, only for timm sources

    cfg = get_pretrained_cfg(rest)
    if cfg is None or not cfg.hf_hub_id:  # unknown name or URL weights: the loader says so
        return None
    return cfg.hf_hub_id, [cfg.hf_hub_filename or "model.safetensors", "pytorch_model.bin"]


def _is_cached(repo: str, filenames: list[str]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in filenames)


def _unreachable(endpoint: str) -> str | None:
    """Why the hub (or the HTTPS proxy in front of it) cannot be reached, or None if it can."""
    proxy = urllib.request.getproxies().get("https") or urllib.request.getproxies().get("all")
    url = urllib.parse.urlsplit(proxy or endpoint)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    outcome: list[str | None] = []

    def attempt() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc.strerror or str(exc))

    thread = threading.Thread(target=attempt, name="lookaside-hub-check", daemon=True)
    thread.start()
    thread.join(HUB_CONNECT_TIMEOUT_S + 0.5)
    if not outcome:
        return f"no answer from {host}:{port} within {HUB_CONNECT_TIMEOUT_S:.0f} s"
    return None if outcome[0] is None else f"{host}:{port}: {outcome[0]}"


def check_available(source: str) -> None:
    """Raise :class:`WeightLoadError` at once when a hub source is not in the Hugging Face cache
    and the hub cannot be reached (``HF_HUB_OFFLINE=1``, or no connection within
    :data:`HUB_CONNECT_TIMEOUT_S`); the message names the backbone and how to get it offline.

    Cached but unreachable: huggingface_hub is switched to offline mode, so loading reads the
    cache at once instead of retrying the network first. Other sources: a missing ``file:``
    raises here too; ``random:`` needs nothing.
    """
    kind, _, rest = source.partition(":")
    if kind == "file" or (kind not in {"timm", "hf", "random"} and source.endswith(".safetensors")):
        path = Path(rest if kind == "file" else source)
        if not path.is_file():
            raise WeightLoadError(f"backbone weights file {str(path)!r} does not exist")
        return
    files = _hub_files(source)
    if files is None:
        return
    from huggingface_hub import constants

    cached = _is_cached(*files)
    if constants.is_offline_mode():
        why: str | None = "HF_HUB_OFFLINE is set"
    else:
        why = _unreachable(constants.ENDPOINT)
    if why is None:
        return
    if cached:
        log.info("the Hugging Face hub is unreachable (%s): %s loads from the cache", why, source)
        constants.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"
        return
    raise WeightLoadError(
        f"backbone {source!r} is not in the Hugging Face cache and the hub cannot be reached "
        f"({why}). Loading it needs network access once (it is cached after that), or a local "
        'file: on a machine with network run `python -c "from lookaside.backbones import '
        f"load_backbone, save_backbone; save_backbone(load_backbone('{source}'), "
        "'backbone.safetensors')\"`, copy the file here and pass --backbone "
        "file:backbone.safetensors (or LOOKASIDE_BACKBONE). Without weights, random:test_vit "
        "is a tiny offline backbone for trying things out"
    )
