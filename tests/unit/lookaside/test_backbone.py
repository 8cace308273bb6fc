"""Backbone: frozen by construction, position embedding resampling, weight files, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer as TimmViT

from lookaside.backbone import BackboneConfig, VisionTransformer, grid_tokens, resample_pos_embed
from lookaside.backbone_convert import adapt_input_conv, timm_config
from lookaside.backbones import PRESETS, build_random, load_backbone, save_backbone
from lookaside.errors import ConfigError, WeightLoadError
from tests.support import tiny_ast


def test_frozen_by_construction(tiny_backbone: VisionTransformer) -> None:
    assert all(not p.requires_grad for p in tiny_backbone.parameters())
    parent = torch.nn.Sequential(tiny_backbone)
    parent.train()
    assert not tiny_backbone.training
    assert all(not m.training for m in tiny_backbone.modules())


def test_vit_b_token_counts() -> None:
    cfg = PRESETS["vit_base_patch16"]
    assert grid_tokens(512, cfg) == 256  # ESC-50, 5 s
    assert grid_tokens(128, cfg) == 64  # Speech Commands, 1 s
    assert PRESETS["ast_base_stride10"].source_grid == (12, 101)


def test_resample_pos_embed_keeps_prefix_and_constant_fields() -> None:
    posemb = torch.randn(1, 2 + 4 * 6, 8)
    same = resample_pos_embed(posemb, (4, 6), (4, 6), 2)
    assert same is posemb
    out = resample_pos_embed(posemb, (8, 3), (4, 6), 2)
    assert out.shape == (1, 2 + 24, 8)
    torch.testing.assert_close(out[:, :2], posemb[:, :2])
    const = torch.ones(1, 1 + 4 * 6, 8) * 3.0
    torch.testing.assert_close(
        resample_pos_embed(const, (5, 9), (4, 6), 1), torch.full((1, 46, 8), 3.0), atol=1e-5, rtol=0
    )
    with pytest.raises(ConfigError, match="expected"):
        resample_pos_embed(posemb, (2, 2), (3, 3), 2)


def test_position_embedding_is_used_on_other_grids(tiny_backbone: VisionTransformer) -> None:
    """The papers' code dropped a mismatched position embedding; ours must resample and use it."""
    spec = torch.randn(1, 64, 128)  # 8 x 4 grid; the stored embedding covers 8 x 8
    other = build_random("test_vit", seed=1)
    with torch.no_grad():
        other.pos_embed.add_(torch.randn_like(other.pos_embed))
        a, layout = tiny_backbone.forward_features(spec)
        b, _ = other.forward_features(spec)
    assert layout.grid == (8, 4)
    assert not torch.allclose(a, b, atol=1e-3)
    expected = resample_pos_embed(tiny_backbone.pos_embed, (8, 4), (8, 8), 1)
    torch.testing.assert_close(
        tiny_backbone.pos_embed_for((8, 4), torch.device("cpu"), torch.float32), expected
    )


def test_adapt_input_conv_sums_rgb() -> None:
    weight = torch.randn(4, 3, 2, 2)
    grey = torch.randn(1, 1, 6, 6)
    summed = adapt_input_conv(weight, 1)
    torch.testing.assert_close(
        F.conv2d(grey, summed), F.conv2d(grey.expand(-1, 3, -1, -1), weight), atol=1e-5, rtol=0
    )
    assert adapt_input_conv(weight, 3) is weight


def test_fingerprint_is_stable_and_sensitive() -> None:
    a, b = build_random("test_vit", seed=4), build_random("test_vit", seed=4)
    assert a.fingerprint() == b.fingerprint()
    assert build_random("test_vit", seed=5).fingerprint() != a.fingerprint()
    state = {k: v.clone() for k, v in b.state_dict().items()}
    state["blocks.0.mlp.fc1.bias"][0] += 1e-3
    b.load_weights(state)
    assert b.fingerprint() != a.fingerprint()


def test_save_and_load_file_round_trip(tmp_path: Path, tiny_deit: VisionTransformer) -> None:
    path = tmp_path / "backbone.safetensors"
    save_backbone(tiny_deit, path)
    loaded = load_backbone(f"file:{path}")
    assert loaded.cfg == tiny_deit.cfg
    assert loaded.fingerprint() == tiny_deit.fingerprint()
    spec = torch.randn(2, 48, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(spec), tiny_deit(spec))
    assert load_backbone(str(path)).fingerprint() == tiny_deit.fingerprint()


def test_load_ast_file_needs_its_config(tmp_path: Path) -> None:
    cfg, ref = tiny_ast(seed=6)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    with pytest.raises(WeightLoadError, match="config.json"):
        load_backbone(f"file:{path}")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    loaded = load_backbone(f"file:{path}")
    assert loaded.cfg.distilled
    assert loaded.cfg.embed_dim == 32


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        ("nowhere:x", ConfigError, "timm:<model name>"),
        ("random:no_such_preset", ConfigError, "presets"),
        ("file:/no/such/file.safetensors", WeightLoadError, "does not exist"),
        ("timm:no_such_model_xyz", WeightLoadError, "could not load timm model"),
    ],
)
def test_load_backbone_errors_name_the_fix(source: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        load_backbone(source)


def test_timm_architectures_we_do_not_reproduce_are_refused() -> None:
    model = TimmViT(
        img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, init_values=1e-5
    )
    with pytest.raises(WeightLoadError, match="layer scale"):
        timm_config(model, "vit_with_layerscale")


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="divisible"):
        BackboneConfig(embed_dim=30, num_heads=4)
    with pytest.raises(ConfigError, match="smaller than one"):
        PRESETS["test_vit"].grid_for(128, 8)
