"""timm architectures our ViT does not reproduce are refused through the ``timm:`` loading path.

Each case builds a tiny timm ViT offline (``pretrained=False``) and hands it to
``load_backbone("timm:...")`` in place of the hub download, so the refusal is the one a user of
``timm:<name>`` would see: a :class:`WeightLoadError` that names the feature, never a raw torch
error and never a backbone that silently computes something else.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import timm
import torch
from timm.layers.activations import QuickGELU
from timm.layers.mlp import SwiGLUPacked
from torch import nn

from lookaside.backbone_convert import timm_config
from lookaside.backbones import load_backbone
from lookaside.errors import WeightLoadError
from tests.support import randomise_module

TINY: dict[str, Any] = {
    "pretrained": False,
    "img_size": (32, 64),
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "num_classes": 0,
}


def _load_through_timm_source(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Any:
    """``load_backbone("timm:...")`` with timm's download replaced by a tiny offline model."""
    ref = timm.create_model("vit_tiny_patch16_224", **TINY, **kwargs).eval()
    randomise_module(ref, seed=7)
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: ref)
    return ref, load_backbone("timm:vit_tiny_variant")


@pytest.mark.parametrize(
    ("kwargs", "feature"),
    [
        ({"act_layer": "quick_gelu"}, "MLP activation QuickGELU"),
        ({"act_layer": "gelu_tanh"}, "MLP activation GELUTanh"),
        ({"act_layer": "relu"}, "MLP activation ReLU"),
        (
            {"act_layer": functools.partial(nn.GELU, approximate="tanh")},
            r"MLP activation GELU\(approximate='tanh'\)",
        ),
        ({"class_token": False, "global_pool": "avg"}, r"no class token \(class_token=False\)"),
        ({"mlp_layer": SwiGLUPacked, "act_layer": "silu"}, "gated or non-standard MLP"),
        ({"qk_norm": True}, "q/k norm"),
        ({"reg_tokens": 2}, "register tokens"),
        ({"proj_bias": False}, "without bias"),
        ({"pos_embed": "none"}, "no learned position embedding"),
        ({"scale_mlp_norm": True}, "MLP norm"),
        ({"norm_layer": "rmsnorm"}, "other than LayerNorm"),
    ],
    ids=[
        "quick_gelu",
        "gelu_tanh",
        "relu",
        "nn_gelu_tanh",
        "no_class_token",
        "swiglu",
        "qk_norm",
        "reg_tokens",
        "proj_bias",
        "no_pos_embed",
        "mlp_norm",
        "rmsnorm",
    ],
)
def test_unsupported_timm_feature_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], feature: str
) -> None:
    with pytest.raises(WeightLoadError, match=feature) as info:
        _load_through_timm_source(monkeypatch, **kwargs)
    assert "vit_tiny_variant" in str(info.value)
    assert "act_layer='gelu'" in str(info.value)  # the message says what would load


def test_timm_gelu_class_is_accepted_and_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's own ``GELU`` class (``act_layer='gelu'``) is exact GELU: it loads and agrees."""
    ref, ours = _load_through_timm_source(monkeypatch, act_layer="gelu")
    assert type(ref.blocks[0].mlp.act).__name__ == "GELU"
    assert ref.blocks[0].mlp.act.__class__.__module__.startswith("timm")
    spec = torch.randn(2, 64, 32)
    image = spec.transpose(1, 2).unsqueeze(1).expand(-1, 3, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.forward_features(spec)[0], ref.forward_features(image), atol=1e-5, rtol=0
        )


def test_activation_in_a_later_block_is_checked() -> None:
    """Every block is inspected, not only the first."""
    model: Any = timm.create_model("vit_tiny_patch16_224", **TINY)
    model.blocks[1].mlp.act = QuickGELU()
    with pytest.raises(WeightLoadError, match="QuickGELU"):
        timm_config(model, "mixed")


def test_not_a_vit_is_refused() -> None:
    with pytest.raises(WeightLoadError, match="not a ViT"):
        timm_config(nn.Linear(2, 2), "linear")
