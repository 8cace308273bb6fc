"""Backbone: frozen by construction, position embedding resampling, weight files, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import save_file
from timm.layers.pos_embed import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer as TimmViT

from lookaside.adapters.head import HeadConfig
from lookaside.adapters.prompt import PromptConfig, PromptSite
from lookaside.backbone import VisionTransformer, resample_pos_embed
from lookaside.backbone_config import BackboneConfig, grid_tokens
from lookaside.backbone_convert import adapt_input_conv, timm_config
from lookaside.backbone_registry import ARCHITECTURES, DEFAULT_ARCHITECTURE, build_backbone
from lookaside.backbones import PRESETS, build_random, from_timm_model, load_backbone, save_backbone
from lookaside.bank import AdapterBank
from lookaside.bank.route import RowRoute
from lookaside.errors import ConfigError, WeightLoadError
from lookaside.sites import TokenLayout
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


@pytest.mark.parametrize(
    ("old_grid", "new_grid", "num_prefix"),
    [
        ((14, 14), (8, 32), 1),  # ImageNet ViT-B/16 (224) on a 128-mel x 512-frame clip
        ((24, 24), (12, 101), 2),  # DeiT-384 on AST's stride-10 grid of 1024 frames
        ((14, 14), (8, 8), 1),  # Speech Commands, 1 s
        ((8, 8), (12, 40), 1),  # upsampling in both directions
        ((12, 101), (12, 50), 2),  # AST's own grid on 5 s clips
    ],
)
def test_resample_pos_embed_equals_timm(
    old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix: int
) -> None:
    """timm's default (antialiased bicubic), which its checkpoint_filter_fn and
    dynamic_img_size use; plain bicubic differed by up to 1.1 on 14x14 -> 8x32."""
    gen = torch.Generator().manual_seed(3)
    posemb = torch.randn(1, num_prefix + old_grid[0] * old_grid[1], 48, generator=gen) * 0.5
    ours = resample_pos_embed(posemb, new_grid, old_grid, num_prefix)
    theirs = resample_abs_pos_embed(
        posemb, list(new_grid), list(old_grid), num_prefix_tokens=num_prefix
    )
    assert ours.shape == (1, num_prefix + new_grid[0] * new_grid[1], 48)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


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


def test_fingerprint_covers_architecture_and_weights_not_the_name(tmp_path: Path) -> None:
    """The same weights under another display name or source are the same backbone."""
    a = build_random("test_vit", seed=4)
    renamed = VisionTransformer(
        BackboneConfig(**{**a.cfg.model_dump(), "name": "vit_renamed"}), source="timm:elsewhere"
    )
    renamed.load_weights(a.state_dict())
    assert renamed.cfg != a.cfg
    assert renamed.fingerprint() == a.fingerprint()
    path = tmp_path / "renamed.safetensors"
    save_backbone(renamed, path)
    assert load_backbone(f"file:{path}").fingerprint() == a.fingerprint()
    # the architecture still counts: same tensors, another LayerNorm epsilon
    other_eps = VisionTransformer(BackboneConfig(**{**a.cfg.model_dump(), "norm_eps": 1e-5}))
    other_eps.load_weights(a.state_dict())
    assert other_eps.fingerprint() != a.fingerprint()


def test_fingerprint_ignores_the_timm_model_name() -> None:
    ref = TimmViT(img_size=(32, 64), patch_size=16, embed_dim=32, depth=1, num_heads=2)
    a = from_timm_model(ref, "vit_base_patch16_224.augreg_in21k")
    b = from_timm_model(ref, "my_local_copy")
    assert (a.cfg.name, a.source) != (b.cfg.name, b.source)
    assert a.fingerprint() == b.fingerprint()


def _block_outputs(
    backbone: VisionTransformer, spec: torch.Tensor, route: object
) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    hooks = [
        block.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach().clone()))
        for _, block in backbone.named_blocks()
    ]
    try:
        with torch.no_grad():
            backbone.forward_features(spec, route)  # type: ignore[arg-type]
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def test_prompts_start_at_their_first_block(tiny_backbone: VisionTransformer) -> None:
    """Prompt tuning on blocks (2, 3): blocks 0 and 1 compute exactly the plain ViT.

    Reference written without the route: plain blocks, prompts inserted after the CLS token
    before block 2 and overwritten before block 3 (VPT-deep).
    """
    bank = AdapterBank(tiny_backbone.cfg)
    bank.add("p", "prompt", PromptConfig(num_tokens=3, layers=(2, 3)), HeadConfig(num_classes=2))
    spec = torch.randn(2, 64, 128)
    plain = _block_outputs(tiny_backbone, spec, None)
    with bank.route(["p", "p"]) as route:
        assert route.prompt_start == 2  # the bank takes it from the config's first layer
        prompted = _block_outputs(tiny_backbone, spec, route)
        with torch.no_grad():
            got, got_layout = tiny_backbone.forward_features(spec, route)
    assert torch.equal(prompted[0], plain[0])
    assert torch.equal(prompted[1], plain[1])
    assert prompted[2].shape[1] == plain[2].shape[1] + 3

    stack = bank.stack_of("p")
    assert stack is not None
    slot = bank.entries["p"].slot
    blocks = [block for _, block in tiny_backbone.named_blocks()]
    with torch.no_grad():
        x, layout = tiny_backbone.embed(spec)
        for block in blocks[:2]:
            x = block(x, None, layout)
        prompt_layout = TokenLayout(num_prefix=1, num_prompts=3, grid=layout.grid)
        for i in (2, 3):
            site = stack.site(i, "tokens")
            assert isinstance(site, PromptSite)
            prompts = site.prompts[slot].expand(2, -1, -1)
            kept = x[:, 1:] if i == 2 else x[:, 4:]
            x = blocks[i](torch.cat([x[:, :1], prompts, kept], dim=1), None, prompt_layout)
        expected = tiny_backbone.norm(x)
    assert got_layout == prompt_layout
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_prompt_start_outside_the_backbone_is_refused(tiny_backbone: VisionTransformer) -> None:
    route = RowRoute(batch_size=1, num_prompts=2, prompt_start=tiny_backbone.cfg.depth)
    with pytest.raises(ConfigError, match="prompt_start"):
        tiny_backbone.forward_features(torch.randn(1, 64, 128), route)


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


# -- two streams: the RGB kernel, frames, lockstep ------------------------------------------------


def test_timm_vit_keeps_its_rgb_kernel_and_frames_match_timm() -> None:
    """An RGB timm ViT converts with its kernel intact: frames through our visual stream equal
    timm's forward_features on the same image; spectrograms use the kernel summed over RGB."""
    ref = TimmViT(img_size=48, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(3)
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    ours = from_timm_model(ref.eval(), "vit_rgb")
    assert (ours.cfg.in_chans, ours.cfg.image_size, ours.cfg.image_grid) == (3, (48, 48), (3, 3))
    torch.testing.assert_close(ours.patch_embed.proj.weight, ref.patch_embed.proj.weight)
    pixels = torch.randn(2, 3, 48, 48)
    spec = torch.randn(2, 48, 48)
    with torch.no_grad():
        (audio, _), (visual, layout) = ours.forward_features_av(spec, pixels)
        expected_audio = ref.forward_features(
            spec.transpose(1, 2).unsqueeze(1).expand(-1, 3, -1, -1)
        )
        expected_visual = ref.forward_features(pixels)
    assert layout.modality == "visual"
    torch.testing.assert_close(visual, expected_visual, atol=1e-4, rtol=0)
    torch.testing.assert_close(audio, expected_audio, atol=1e-4, rtol=0)


def test_one_channel_timm_model_stays_one_channel() -> None:
    ref = TimmViT(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, in_chans=1)
    ours = from_timm_model(ref, "vit_mono")
    assert ours.cfg.in_chans == 1
    assert ours.mono_kernel() is None
    with pytest.raises(ConfigError, match="cannot embed video frames"):
        ours.embed_frames(torch.randn(1, 3, 32, 32))


def test_ast_backbone_refuses_the_visual_stream() -> None:
    cfg, ast = tiny_ast(seed=4)
    from lookaside.backbones import from_ast_state_dict

    ours = from_ast_state_dict(ast.state_dict(), cfg.to_dict(), "hf:test/ast")
    with pytest.raises(ConfigError, match=r"no RGB one .*timm:vit_base_patch16_224"):
        ours.forward_features_av(torch.randn(1, 64, 32), torch.randn(1, 3, 32, 32))


def test_mono_kernel_follows_the_weights() -> None:
    backbone = build_random("test_vit_av", seed=1)
    first = backbone.mono_kernel()
    assert first is not None
    assert first is backbone.mono_kernel()
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    state["patch_embed.proj.weight"][0, 1] += 1.0
    backbone.load_weights(state)
    second = backbone.mono_kernel()
    assert second is not None
    torch.testing.assert_close(second, state["patch_embed.proj.weight"].sum(dim=1, keepdim=True))
    assert not torch.allclose(first, second)
    with torch.no_grad():
        backbone.patch_embed.proj.weight.mul_(2.0)  # an in-place edit bumps the version
    third = backbone.mono_kernel()
    assert third is not None
    torch.testing.assert_close(third, 2 * second)


def test_image_size_counts_in_the_fingerprint_only_with_an_rgb_kernel() -> None:
    mono = build_random("test_vit", seed=2)
    same = VisionTransformer(BackboneConfig(**{**mono.cfg.model_dump(), "image_size": (64, 64)}))
    same.load_weights(mono.state_dict())
    assert same.fingerprint() == mono.fingerprint()
    rgb = build_random("test_vit_av", seed=2)
    other = VisionTransformer(BackboneConfig(**{**rgb.cfg.model_dump(), "image_size": (64, 64)}))
    other.load_weights(rgb.state_dict())
    assert other.fingerprint() != rgb.fingerprint()


def test_two_stream_forward_checks_its_inputs() -> None:
    backbone = build_random("test_vit_av")
    with pytest.raises(ConfigError, match="each row is one moment"):
        backbone.forward_features_av(torch.randn(2, 98, 64), torch.randn(3, 3, 48, 48))
    with pytest.raises(ConfigError, match=r"expected \[batch, 3, height, width\]"):
        backbone.forward_features_av(torch.randn(1, 98, 64), torch.randn(1, 1, 48, 48))
    with pytest.raises(ConfigError, match="smaller than one 16-pixel patch"):
        backbone.forward_features_av(torch.randn(1, 98, 64), torch.randn(1, 3, 8, 48))


def test_backbone_architectures_are_one_explicit_table() -> None:
    assert list(ARCHITECTURES) == [DEFAULT_ARCHITECTURE] == ["vit"]
    backbone = build_backbone(PRESETS["test_vit"], "random:test_vit:0")
    assert isinstance(backbone, VisionTransformer)
    assert backbone.fingerprint() == build_random("test_vit").fingerprint()
    with pytest.raises(
        ConfigError, match="unknown backbone architecture 'swin'; choose one of: vit"
    ):
        build_backbone(PRESETS["test_vit"], "random:test_vit:0", arch="swin")
