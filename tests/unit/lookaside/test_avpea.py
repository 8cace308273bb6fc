"""AV-PEA: the two-stream forward, the per-row oracle, and plain references from the paper.

The references below are written from the paper's equations (§3.3, eq. 3-8, and Algorithm 1)
with plain tensor ops in float64, independent of the batched per-slot code they check.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lookaside.adapters import ADAPTERS, HeadConfig
from lookaside.adapters.avpea import LN_EPS, AvpeaConfig
from lookaside.adapters.shapes import expected_shapes
from lookaside.adapters.stack import AdapterStack
from lookaside.backbone import VisionTransformer
from lookaside.backbones import PRESETS, build_random
from lookaside.bank import AdapterBank
from lookaside.checkpoint import AdapterCheckpoint, load_checkpoint
from lookaside.errors import ConfigError, InvalidCheckpoint
from lookaside.features import FeatureConfig
from lookaside.model import MultiAdapterModel
from lookaside.sites import AUDIO_VISUAL_POSITIONS
from lookaside.tasks.av_events import per_second_events, segment_windows
from tests.support import randomise

FRAMES, MEL = 98, 64  # one second of fbank frames (Kaldi snip_edges) -> a 4 x 6 grid
SEGMENTS = 3
TOL = 1e-5
CFG_A: dict[str, object] = {"reduction": 8, "segments": 4, "temporal_heads": 2}
CFG_B: dict[str, object] = {"reduction": 4, "segments": 3, "temporal_heads": 4}


@pytest.fixture(scope="module")
def av_backbone() -> VisionTransformer:
    return build_random("test_vit_av", seed=3)


def clips(n: int, segments: int = SEGMENTS, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    spec = torch.randn(n, segments, FRAMES, MEL, generator=gen)
    pixels = torch.randn(n, segments, 3, 48, 48, generator=gen)
    return spec, pixels


def make_model(
    backbone: VisionTransformer, adapters: dict[str, dict[str, object]], capacity: int = 2
) -> MultiAdapterModel:
    bank = AdapterBank.for_backbone(backbone, capacity=capacity)
    for i, (adapter_id, cfg) in enumerate(adapters.items()):
        pool = "cls" if i % 2 else "mean"
        bank.add(adapter_id, "avpea", cfg, HeadConfig(num_classes=3 + i % 2, pool=pool))
        randomise(bank, adapter_id, seed=40 + i)
    return MultiAdapterModel(backbone, bank)


# -- registration and shapes ----------------------------------------------------------------------


def test_avpea_is_registered_and_uses_the_audio_visual_positions(
    av_backbone: VisionTransformer,
) -> None:
    spec = ADAPTERS["avpea"]
    assert spec.tasks == ("av_events",)
    stack = AdapterStack(spec, spec.parse_config({}), av_backbone.cfg, 1)
    positions = {pos for _, pos in stack._lookup}
    assert positions == set(AUDIO_VISUAL_POSITIONS)
    names = stack.slot_shapes()
    assert "clip.pos" in names
    assert "blocks.0.attn_cross.audio_gate_cross" in names
    assert "blocks.3.attn_cross.visual_down" in names


def test_vit_b_parameter_count_matches_the_paper() -> None:
    """Paper (Table 1): AV-PEA on ViT-B/16 is 3.7 M trainable parameters."""
    cfg = PRESETS["vit_base_patch16_224"]
    shapes = expected_shapes(cfg, "avpea", {}, HeadConfig(num_classes=29))
    blocks = sum(math.prod(s) for k, s in shapes.items() if k.startswith("blocks."))
    assert cfg.embed_dim // 8 == shapes["blocks.0.attn_cross.audio_down"][1] == 96  # D = 8 d
    assert abs(blocks - 3.7e6) / 3.7e6 < 0.03, blocks


def test_meta_shapes_equal_the_real_adapter(av_backbone: VisionTransformer) -> None:
    bank = AdapterBank.for_backbone(av_backbone)
    bank.add("a", "avpea", CFG_A, HeadConfig(num_classes=5))
    real = {k: tuple(v.shape) for k, v in bank.adapter_tensors("a").items()}
    assert expected_shapes(av_backbone.cfg, "avpea", CFG_A, HeadConfig(num_classes=5)) == real


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"reduction": 128}, "reduction"),
        ({"reduction": 8, "temporal_heads": 3}, "temporal_heads 3 does not divide"),
        ({"segments": 0}, "segments"),
    ],
)
def test_bad_configs_are_refused(
    av_backbone: VisionTransformer, raw: dict[str, object], match: str
) -> None:
    bank = AdapterBank.for_backbone(av_backbone)
    with pytest.raises(ValueError, match=match):
        bank.add("x", "avpea", raw, HeadConfig(num_classes=2))
    assert bank.ids() == []


def test_spectrogram_only_backbone_is_refused(tiny_backbone: VisionTransformer) -> None:
    """An AST-like backbone (1-channel kernel only) cannot host the visual stream."""
    bank = AdapterBank.for_backbone(tiny_backbone)
    with pytest.raises(ConfigError, match="RGB patch kernel"):
        bank.add("x", "avpea", {}, HeadConfig(num_classes=2))
    with pytest.raises(ConfigError, match="no RGB one"):
        tiny_backbone.forward_features_av(torch.randn(1, 64, 128), torch.randn(1, 3, 32, 32))


# -- the backbone is shared, never copied ---------------------------------------------------------


def test_both_streams_run_through_the_same_blocks(av_backbone: VisionTransformer) -> None:
    storage = {n: p.untyped_storage().data_ptr() for n, p in av_backbone.named_parameters()}
    model = make_model(av_backbone, {"a": CFG_A})
    calls: list[tuple[int, int]] = []
    hooks = [
        block.register_forward_hook(lambda m, args, out: calls.append((m.index, args[0].shape[1])))
        for block in av_backbone.blocks
    ]
    try:
        with torch.no_grad():
            model.forward_av(*clips(1), ["a"])
    finally:
        for h in hooks:
            h.remove()
    # lockstep: block l runs the audio stream (25 tokens) then the visual one (10), then l + 1
    assert calls == [(i, n) for i in range(4) for n in (25, 10)]
    assert {n: p.untyped_storage().data_ptr() for n, p in model.backbone.named_parameters()} == (
        storage
    )
    bank_storage = {p.untyped_storage().data_ptr() for p in model.bank.parameters()}
    assert not bank_storage & set(storage.values())
    assert model.backbone is av_backbone


def test_audio_stream_uses_the_rgb_kernel_summed(av_backbone: VisionTransformer) -> None:
    mono = av_backbone.mono_kernel()
    assert mono is not None
    weight = av_backbone.patch_embed.proj.weight
    torch.testing.assert_close(mono, weight.sum(dim=1, keepdim=True))
    spec = torch.randn(2, FRAMES, MEL)
    grey = spec.transpose(1, 2).unsqueeze(1).expand(-1, 3, -1, -1)
    with torch.no_grad():
        tokens, _ = av_backbone.patch_embed(spec, mono)
        expected = F.conv2d(grey, weight, av_backbone.patch_embed.proj.bias, stride=16)
    torch.testing.assert_close(tokens, expected.flatten(2).transpose(1, 2), atol=1e-5, rtol=0)


def test_bare_two_stream_forward_equals_each_stream_alone(av_backbone: VisionTransformer) -> None:
    spec, pixels = clips(2)
    spec, pixels = spec.flatten(0, 1), pixels.flatten(0, 1)
    with torch.no_grad():
        (audio, la), (visual, lv) = av_backbone.forward_features_av(spec, pixels)
        alone, _ = av_backbone.forward_features(spec)
        x, _ = av_backbone.embed_frames(pixels)
        for block in av_backbone.blocks:
            x = block(x, None, lv)
        expected_visual = av_backbone.norm(x)
    assert (la.modality, lv.modality, lv.grid) == ("audio", "visual", (3, 3))
    assert torch.equal(audio, alone)
    assert torch.equal(visual, expected_visual)


# -- fresh adapters change nothing; trained ones change both streams ------------------------------


def test_fresh_adapter_leaves_both_streams_exactly_unchanged(
    av_backbone: VisionTransformer,
) -> None:
    """Gates g and h start at zero (and nothing re-initialises them afterwards: NOTES §8)."""
    bank = AdapterBank.for_backbone(av_backbone)
    bank.add("fresh", "avpea", CFG_A, HeadConfig(num_classes=2), seed=5)
    stack = bank.stack_of("fresh")
    assert stack is not None
    gates = [t for k, t in stack.slot_tensors(0).items() if "gate" in k]
    assert len(gates) == 4 * 4
    assert all(torch.equal(g, torch.zeros(1)) for g in gates)
    up = stack.slot_tensors(0)["blocks.0.attn_cross.audio_up"]
    assert up.abs().sum() > 0  # random: a zero W_up would leave h without gradient
    spec, pixels = clips(1)
    spec, pixels = spec.flatten(0, 1), pixels.flatten(0, 1)
    with torch.no_grad(), bank.route(["fresh"] * SEGMENTS) as route:
        (audio, _), (visual, _) = av_backbone.forward_features_av(spec, pixels, route)
        (audio0, _), (visual0, _) = av_backbone.forward_features_av(spec, pixels)
    assert torch.equal(audio, audio0)
    assert torch.equal(visual, visual0)
    # the fresh temporal model passes the fused tokens through (zero output projection)
    assert torch.equal(stack.slot_tensors(0)["clip.out_proj"], torch.zeros(8, 64))


def test_each_stream_sees_the_other(av_backbone: VisionTransformer) -> None:
    """With g and h open, changing only the frames changes the audio stream and vice versa."""
    model = make_model(av_backbone, {"a": CFG_A})
    spec, pixels = clips(1)
    spec, pixels = spec.flatten(0, 1), pixels.flatten(0, 1)
    with torch.no_grad(), model.bank.route(["a"] * SEGMENTS) as route:
        (audio, _), (visual, _) = av_backbone.forward_features_av(spec, pixels, route)
        (audio2, _), (visual2, _) = av_backbone.forward_features_av(spec, pixels + 1.0, route)
        (audio3, _), (visual3, _) = av_backbone.forward_features_av(spec + 1.0, pixels, route)
    assert not torch.allclose(audio, audio2)
    assert not torch.allclose(visual, visual3)
    with torch.no_grad():
        (bare_a, _), _ = av_backbone.forward_features_av(spec, pixels)
        (bare_a2, _), _ = av_backbone.forward_features_av(spec, pixels + 1.0)
    assert torch.equal(bare_a, bare_a2)  # without adapters the streams never meet


# -- mixed batches: every clip equals that clip run alone -----------------------------------------


def test_mixed_batch_rows_equal_rows_alone(av_backbone: VisionTransformer) -> None:
    model = make_model(av_backbone, {"a": CFG_A, "b": CFG_B, "a2": CFG_A})
    ids: list[str | None] = ["a", "b", None, "a2", "a", "b", "a2"]
    spec, pixels = clips(len(ids), seed=1)
    with torch.no_grad():
        mixed = model.forward_av(spec, pixels, ids)
        alone = [
            model.forward_av(spec[i : i + 1], pixels[i : i + 1], [a])[0] for i, a in enumerate(ids)
        ]
    for got, expected, adapter_id in zip(mixed, alone, ids, strict=True):
        if adapter_id is None:
            assert got is None
            assert expected is None
            continue
        assert got is not None
        assert expected is not None
        assert got.shape == (SEGMENTS, model.bank.head(adapter_id).cfg.num_classes)
        torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)
    assert mixed[0] is not None
    assert mixed[3] is not None
    other = model.forward_av(spec[:1], pixels[:1], ["a2"])[0]
    assert other is not None
    assert not torch.allclose(mixed[0], other)  # a and a2 share a config, not weights


def test_skewed_and_single_row_batches(av_backbone: VisionTransformer) -> None:
    model = make_model(av_backbone, {"x": CFG_A, "y": CFG_B})
    ids: list[str | None] = ["x", *["y"] * 5]
    spec, pixels = clips(len(ids), segments=2, seed=2)
    with torch.no_grad():
        mixed = model.forward_av(spec, pixels, ids)
        logits = model.logits_av(spec[1:], pixels[1:], "y")
        one = model.forward_av(spec[:1], pixels[:1], ["x"])[0]
    assert mixed[0] is not None
    assert one is not None
    torch.testing.assert_close(mixed[0], one, atol=TOL, rtol=TOL)
    for i in range(5):
        got = mixed[i + 1]
        assert got is not None
        torch.testing.assert_close(got, logits[i], atol=TOL, rtol=TOL)


# -- plain references from the paper --------------------------------------------------------------


def _ln(
    x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = LN_EPS
) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    out = (x - mean) / torch.sqrt(var + eps)
    return out if weight is None else out * weight + (0 if bias is None else bias)


def _attention(x: Tensor, qkv_w: Tensor, qkv_b: Tensor, heads: int) -> Tensor:
    """Multi-head self-attention of ``[L, C]`` tokens, ``qkv`` as ``x @ W + b`` columns."""
    L, C = x.shape
    q, k, v = (x @ qkv_w + qkv_b).split(C, dim=-1)
    dh = C // heads
    out = []
    for h in range(heads):
        qh, kh, vh = (t[:, h * dh : (h + 1) * dh] for t in (q, k, v))
        out.append(torch.softmax(qh @ kh.T / math.sqrt(dh), dim=-1) @ vh)
    return torch.cat(out, dim=-1)


def reference_adapter(x: Tensor, other: Tensor, p: dict[str, Tensor]) -> Tensor:
    """B of eq. 5-8 for one clip segment: ``x`` ``[L, D]``, ``other`` ``[M, D]``."""
    theta = torch.softmax(x[:1] @ other.T, dim=-1)  # eq. 7-8, CLS is the only query
    ca = p["gate_cross"] * (theta @ other)
    tokens = torch.cat([x[:1] + ca, x[1:]])  # Algorithm 1: res = x_cls + g * CA, then || X_p
    h = _ln(tokens, p["norm_in_weight"], p["norm_in_bias"])
    z = torch.relu(h @ p["down"] + p["down_bias"])
    out = _ln(z @ p["up"] + p["up_bias"], p["norm_out_weight"], p["norm_out_bias"])
    return p["gate_out"] * out


def reference_block(
    w: dict[str, Tensor],
    i: int,
    heads: int,
    eps: float,
    xa: Tensor,
    xv: Tensor,
    ad: dict[str, dict[str, Tensor]],
) -> tuple[Tensor, Tensor]:
    """Eq. 3-4 for both streams of one segment, from the block's weights ``w``."""

    def stream(x: Tensor, other: Tensor, p: dict[str, Tensor]) -> Tensor:
        b = f"blocks.{i}."
        h = _ln(x, w[b + "norm1.weight"], w[b + "norm1.bias"], eps)
        msa = _attention(h, w[b + "attn.qkv.weight"].T, w[b + "attn.qkv.bias"], heads)
        msa = msa @ w[b + "attn.proj.weight"].T + w[b + "attn.proj.bias"]
        y = x + msa + reference_adapter(x, other, p)
        h = _ln(y, w[b + "norm2.weight"], w[b + "norm2.bias"], eps)
        ffn = F.gelu(h @ w[b + "mlp.fc1.weight"].T + w[b + "mlp.fc1.bias"])
        return y + ffn @ w[b + "mlp.fc2.weight"].T + w[b + "mlp.fc2.bias"]

    return stream(xa, xv, ad["audio"]), stream(xv, xa, ad["visual"])


def reference_temporal(z: Tensor, p: dict[str, Tensor], heads: int) -> Tensor:
    """The clip site: ``z + W_out(layer(LN(z) W_in + pos))`` over ``[S, D]``."""
    S = z.shape[0]
    u = _ln(z, p["norm_weight"], p["norm_bias"]) @ p["in_proj"] + p["in_bias"] + p["pos"][:S]
    a = _ln(u, p["attn_norm_weight"], p["attn_norm_bias"])
    u = u + _attention(a, p["qkv"], p["qkv_bias"], heads) @ p["attn_proj"] + p["attn_proj_bias"]
    m = _ln(u, p["mlp_norm_weight"], p["mlp_norm_bias"])
    u = u + F.gelu(m @ p["fc1"] + p["fc1_bias"]) @ p["fc2"] + p["fc2_bias"]
    return z + u @ p["out_proj"] + p["out_bias"]


def _adapter_params(tensors: dict[str, Tensor], block: int) -> dict[str, dict[str, Tensor]]:
    out: dict[str, dict[str, Tensor]] = {"audio": {}, "visual": {}}
    prefix = f"blocks.{block}.attn_cross."
    for key, value in tensors.items():
        if key.startswith(prefix):
            stream, _, name = key.removeprefix(prefix).partition("_")
            out[stream][name] = value
    return out


def test_one_block_matches_the_paper_equations(av_backbone: VisionTransformer) -> None:
    model = make_model(av_backbone, {"a": CFG_B})
    tensors = {k: v.double() for k, v in model.bank.adapter_tensors("a").items()}
    weights = {k: v.double() for k, v in av_backbone.state_dict().items()}
    spec, pixels = clips(1)
    with torch.no_grad():
        xa, la = av_backbone.embed(spec[0])
        xv, lv = av_backbone.embed_frames(pixels[0])
        with model.bank.route(["a"] * SEGMENTS) as route:
            block = av_backbone.blocks[1]
            got_a, got_v = block(xa, route, la, xv, lv), block(xv, route, lv, xa, la)
    cfg = av_backbone.cfg
    for s in range(SEGMENTS):
        ref_a, ref_v = reference_block(
            weights,
            1,
            cfg.num_heads,
            cfg.norm_eps,
            xa[s].double(),
            xv[s].double(),
            _adapter_params(tensors, 1),
        )
        torch.testing.assert_close(got_a[s].double(), ref_a, atol=TOL, rtol=TOL)
        torch.testing.assert_close(got_v[s].double(), ref_v, atol=TOL, rtol=TOL)
        assert not torch.allclose(ref_a, xa[s].double() + 0)  # the block really ran


def test_whole_model_matches_the_plain_reference(av_backbone: VisionTransformer) -> None:
    """Embeddings -> reference blocks (both streams) -> final norm -> fused CLS -> reference
    temporal layer -> head, against the batched model on a mixed batch."""
    model = make_model(av_backbone, {"a": CFG_A, "b": CFG_B})
    ids: list[str | None] = ["b", "a", "b"]
    spec, pixels = clips(len(ids), seed=4)
    cfg = av_backbone.cfg
    weights = {k: v.double() for k, v in av_backbone.state_dict().items()}
    with torch.no_grad():
        got = model.forward_av(spec, pixels, ids)
        for row, adapter_id in enumerate(ids):
            assert adapter_id is not None
            tensors = {k: v.double() for k, v in model.bank.adapter_tensors(adapter_id).items()}
            xa = av_backbone.embed(spec[row])[0].double()
            xv = av_backbone.embed_frames(pixels[row])[0].double()
            fused = []
            for s in range(SEGMENTS):
                a, v = xa[s], xv[s]
                for i in range(cfg.depth):
                    a, v = reference_block(
                        weights, i, cfg.num_heads, cfg.norm_eps, a, v, _adapter_params(tensors, i)
                    )
                a = _ln(a, weights["norm.weight"], weights["norm.bias"], cfg.norm_eps)
                v = _ln(v, weights["norm.weight"], weights["norm.bias"], cfg.norm_eps)
                fused.append((a[0] + v[0]) / 2)
            clip = {k.removeprefix("clip."): t for k, t in tensors.items() if k.startswith("clip.")}
            heads = AvpeaConfig.model_validate(model.bank.entries[adapter_id].config).temporal_heads
            z = reference_temporal(torch.stack(fused), clip, heads)
            z = _ln(z, tensors["head.norm.weight"], tensors["head.norm.bias"], 1e-5)
            expected = z @ tensors["head.fc.weight"].T + tensors["head.fc.bias"]
            result = got[row]
            assert result is not None
            torch.testing.assert_close(result.double(), expected, atol=1e-4, rtol=1e-4)


# -- training and checkpoints ---------------------------------------------------------------------


def test_gradients_reach_only_adapter_and_head(av_backbone: VisionTransformer) -> None:
    bank = AdapterBank.for_backbone(av_backbone, trainable=True)
    bank.add("t", "avpea", CFG_A, HeadConfig(num_classes=3), seed=1)
    model = MultiAdapterModel(av_backbone, bank)
    spec, pixels = clips(2, seed=5)
    logits = model.logits_av(spec, pixels, "t")
    assert logits.shape == (2, SEGMENTS, 3)
    F.cross_entropy(logits.flatten(0, 1), torch.tensor([0, 1, 2] * 2)).backward()
    assert all(p.grad is None for p in av_backbone.parameters())
    params = dict(bank.named_parameters())
    grads = {n: p.grad for n, p in params.items() if p.grad is not None}
    assert any("gate_out" in n and g.abs().sum() > 0 for n, g in grads.items())
    assert any("clip" in n and g.abs().sum() > 0 for n, g in grads.items())


def test_checkpoint_round_trip(av_backbone: VisionTransformer, tmp_path: Path) -> None:
    model = make_model(av_backbone, {"decoy@1": CFG_A, "ave@2": CFG_A})
    labels = ["dog", "guitar", "siren", "background"]
    ckpt = AdapterCheckpoint.from_bank(
        model.bank,
        "ave@2",
        name="ave",
        version=2,
        task="audio-visual events",
        task_type="multiclass",
        labels=labels,
        features=FeatureConfig(num_mel_bins=MEL, target_frames=FRAMES),
        backbone=av_backbone,
    )
    ckpt.save(tmp_path / "ave" / "2")
    loaded = load_checkpoint(tmp_path / "ave" / "2", backbone=av_backbone)
    assert loaded.manifest.trainable_params == model.bank.num_adapter_params("ave@2")
    fresh = AdapterBank.for_backbone(av_backbone)
    loaded.load_into(fresh)
    spec, pixels = clips(2, seed=6)
    with torch.no_grad():
        before = model.forward_av(spec, pixels, ["ave@2", "decoy@1"])
        after = MultiAdapterModel(av_backbone, fresh).forward_av(spec, pixels, ["ave@2", None])
    assert before[0] is not None
    assert after[0] is not None
    torch.testing.assert_close(after[0], before[0], atol=1e-6, rtol=0)
    # the same checkpoint is refused by a spectrogram-only backbone of the same width
    mono = build_random("test_vit")
    with pytest.raises(InvalidCheckpoint):
        load_checkpoint(tmp_path / "ave" / "2", backbone=mono)


# -- the two kinds of forward refuse each other's adapters ----------------------------------------


def test_forwards_refuse_the_other_kind_of_adapter(av_backbone: VisionTransformer) -> None:
    model = make_model(av_backbone, {"av": CFG_A})
    model.bank.add("audio", "bottleneck", {"rank": 4}, HeadConfig(num_classes=2))
    spec, pixels = clips(1)
    with pytest.raises(ConfigError, match=r"audio-visual: call forward_av"):
        model(spec[0], ["av"] * SEGMENTS)
    with pytest.raises(ConfigError, match=r"audio-visual"):
        model.logits(spec[0], "av")
    with pytest.raises(ConfigError, match=r"classifies audio only"):
        model.forward_av(spec, pixels, ["audio"])
    with pytest.raises(ConfigError, match="longer than the 4"):
        model.forward_av(*clips(1, segments=5), ["av"])
    with pytest.raises(ConfigError, match="same clips and segments"):
        model.forward_av(spec, pixels[:, :2], ["av"])
    # the audio adapter still works through the audio forward on the same backbone
    assert model(spec[0], ["audio"] * SEGMENTS)[0] is not None


def test_bf16_bank_under_autocast(av_backbone: VisionTransformer) -> None:
    """A serving bank in bf16 beside the fp32 backbone: the per-row oracle holds at bf16
    tolerance and the logits stay close to the fp32 bank's."""
    fp32 = make_model(av_backbone, {"a": CFG_A, "b": CFG_B})
    bank16 = AdapterBank.for_backbone(av_backbone, capacity=2, dtype=torch.bfloat16)
    for adapter_id in ("a", "b"):
        entry = fp32.bank.entries[adapter_id]
        bank16.add(
            adapter_id,
            "avpea",
            entry.config,
            fp32.bank.head(adapter_id).cfg,
            fp32.bank.adapter_tensors(adapter_id),
        )
    bf16 = MultiAdapterModel(av_backbone, bank16)
    ids: list[str | None] = ["a", "b", None, "a"]
    spec, pixels = clips(len(ids), seed=7)
    with pytest.raises(ConfigError, match="autocast"):
        bf16.forward_av(spec, pixels, ids)
    with torch.no_grad():
        reference = fp32.forward_av(spec, pixels, ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = bf16.forward_av(spec, pixels, ids)
            alone = [
                bf16.forward_av(spec[i : i + 1], pixels[i : i + 1], [a])[0]
                for i, a in enumerate(ids)
            ]
    for got, one, ref in zip(mixed, alone, reference, strict=True):
        if ref is None:
            assert got is None
            continue
        assert got is not None
        assert one is not None
        torch.testing.assert_close(got.float(), one.float(), atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(got.float(), ref, atol=0.15, rtol=0.1)


def test_per_second_events_merge_runs_and_skip_background() -> None:
    labels = ["dog", "bell", "background"]
    rows = [[0.1, 0.1, 0.8], [0.7, 0.2, 0.1], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]]
    seconds, events = per_second_events(torch.tensor(rows), labels, offset=10)
    assert [(s.t, s.label) for s in seconds] == [
        (10, "background"),
        (11, "dog"),
        (12, "dog"),
        (13, "bell"),
        (14, "background"),
    ]
    assert seconds[2].score == pytest.approx(0.9)
    assert [(e.start_s, e.end_s, e.label) for e in events] == [(11, 13, "dog"), (13, 14, "bell")]
    assert events[0].score == pytest.approx(0.8)
    with pytest.raises(ConfigError, match=r"\[seconds, 3\]"):
        per_second_events(torch.zeros(2, 4), labels)


def test_segment_windows_cover_long_clips() -> None:
    assert segment_windows(25, 10) == [(0, 10), (10, 20), (20, 25)]
    assert segment_windows(3, 10) == [(0, 3)]
