"""Our ViT against the reference implementations on shared random weights (fp32, <= 1e-4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer as TimmViT
from transformers import ASTConfig, ASTModel

import lookaside.backbones
from lookaside.backbones import from_ast_state_dict, from_timm_model, load_backbone
from tests.support import randomise_module, tiny_ast

TOL = 1e-4


@pytest.mark.parametrize("distilled", [False, True], ids=["vit", "deit_distilled"])
def test_timm_vit_matches(distilled: bool) -> None:
    # vit_base_patch16_224 / deit_base_distilled_patch16_384 shapes, shrunk for CI.
    kwargs = {
        "img_size": (32, 64),
        "patch_size": 16,
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 4,
        "num_classes": 5,
    }
    ref = (VisionTransformerDistilled if distilled else TimmViT)(**kwargs).eval()
    randomise_module(ref, seed=1)
    ours = from_timm_model(ref, "vit_test")
    assert ours.cfg.distilled is distilled
    spec = torch.randn(3, 64, 32)  # [batch, frames, mel]
    image = spec.transpose(1, 2).unsqueeze(1).expand(-1, 3, -1, -1)  # grey image on R, G, B
    with torch.no_grad():
        expected = ref.forward_features(image)
        got, layout = ours.forward_features(spec)
    assert layout.grid == (2, 4)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("distilled", [False, True], ids=["vit", "deit_distilled"])
@pytest.mark.parametrize(
    ("img_size", "mel_frames"),
    [((224, 224), (128, 512)), ((64, 96), (48, 256))],
    ids=["14x14_to_8x32", "4x6_to_3x16"],
)
def test_timm_vit_matches_on_another_grid(
    distilled: bool, img_size: tuple[int, int], mel_frames: tuple[int, int]
) -> None:
    """An ImageNet-grid timm ViT run on a spectrogram grid (timm resamples its position
    embedding with ``dynamic_img_size``): ours must see the same positions."""
    kwargs = {
        "img_size": img_size,
        "patch_size": 16,
        "embed_dim": 32,
        "depth": 1,
        "num_heads": 2,
        "num_classes": 0,
        "dynamic_img_size": True,
    }
    ref = (VisionTransformerDistilled if distilled else TimmViT)(**kwargs).eval()
    randomise_module(ref, seed=8)
    with torch.no_grad():
        ref.pos_embed.mul_(20.0)  # positions that matter next to the other inputs
    ours = from_timm_model(ref, "vit_test")
    mel, frames = mel_frames
    spec = torch.randn(2, frames, mel)
    image = spec.transpose(1, 2).unsqueeze(1).expand(-1, 3, -1, -1)
    with torch.no_grad():
        expected = ref.forward_features(image)
        got, layout = ours.forward_features(spec)
    assert layout.grid == (mel // 16, frames // 16)
    assert layout.grid != ours.cfg.source_grid
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("stride", [16, 10])
def test_hf_ast_matches(stride: int) -> None:
    cfg = ASTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        patch_size=16,
        frequency_stride=stride,
        time_stride=stride,
        max_length=96,
        num_mel_bins=48,
    )
    ref = ASTModel(cfg).eval()
    randomise_module(ref, seed=2)
    ours = from_ast_state_dict(ref.state_dict(), cfg.to_dict(), "hf:test/ast")
    assert ours.cfg.patch_stride == (stride, stride)
    spec = torch.randn(2, 96, 48)
    with torch.no_grad():
        expected = ref(spec)
        got, _ = ours.forward_features(spec)
        pooled = ours(spec)
    torch.testing.assert_close(got, expected.last_hidden_state, atol=TOL, rtol=0)
    torch.testing.assert_close(pooled, expected.pooler_output, atol=TOL, rtol=0)


def _to_hub_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers-5 AST keys -> the layout of the published hub checkpoints."""
    renames = {
        "attention.q_proj": "attention.attention.query",
        "attention.k_proj": "attention.attention.key",
        "attention.v_proj": "attention.attention.value",
        "attention.o_proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    out = {}
    for key, value in state.items():
        new = key
        if key.startswith("layers."):
            new = "encoder.layer." + key.removeprefix("layers.")
            for a, b in renames.items():
                new = new.replace(f".{a}.", f".{b}.")
        out["audio_spectrogram_transformer." + new] = value
    return out


def test_hub_layout_ast_checkpoint_loads_the_same() -> None:
    cfg, ref = tiny_ast(seed=3)
    hub = _to_hub_layout(ref.state_dict())
    assert "audio_spectrogram_transformer.encoder.layer.0.attention.attention.query.weight" in hub
    ours = from_ast_state_dict(hub, cfg.to_dict(), "hf:test/ast")
    spec = torch.randn(2, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.forward_features(spec)[0], ref(spec).last_hidden_state, atol=TOL, rtol=0
        )


def test_load_backbone_timm_source_goes_through_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    """``timm:<name>`` asks timm for pretrained weights (hub when online) and converts them."""
    import timm

    ref = TimmViT(img_size=(32, 64), patch_size=16, embed_dim=32, depth=1, num_heads=2)
    randomise_module(ref, seed=4)
    calls = []

    def fake_create_model(name: str, **kwargs: object) -> TimmViT:
        calls.append((name, kwargs))
        return ref

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    checked: list[str] = []  # the offline check runs first (no network here: it is recorded)
    monkeypatch.setattr(lookaside.backbones, "check_available", checked.append)
    ours = load_backbone("timm:vit_base_patch16_224.augreg_in21k")
    assert checked == ["timm:vit_base_patch16_224.augreg_in21k"]
    assert calls == [("vit_base_patch16_224.augreg_in21k", {"pretrained": True, "num_classes": 0})]
    assert ours.source == "timm:vit_base_patch16_224.augreg_in21k"
    spec = torch.randn(1, 64, 32)
    image = spec.transpose(1, 2).unsqueeze(1).expand(-1, 3, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.forward_features(spec)[0], ref.forward_features(image), atol=TOL, rtol=0
        )


def test_load_backbone_hf_source_reads_the_hub_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``hf:<repo>`` downloads config.json + model.safetensors (hub layout) and converts them."""
    import huggingface_hub

    cfg, ref = tiny_ast(seed=5)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    save_file(
        {k: v.contiguous() for k, v in _to_hub_layout(ref.state_dict()).items()},
        str(tmp_path / "model.safetensors"),
    )
    asked = []

    def fake_download(repo: str, filename: str) -> str:
        asked.append((repo, filename))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    checked: list[str] = []  # the offline check runs first (no network here: it is recorded)
    monkeypatch.setattr(lookaside.backbones, "check_available", checked.append)
    ours = load_backbone("hf:MIT/ast-finetuned-audioset-10-10-0.4593")
    assert checked == ["hf:MIT/ast-finetuned-audioset-10-10-0.4593"]
    assert ("MIT/ast-finetuned-audioset-10-10-0.4593", "model.safetensors") in asked
    spec = torch.randn(2, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.forward_features(spec)[0], ref(spec).last_hidden_state, atol=TOL, rtol=0
        )
