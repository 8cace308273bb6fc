"""The mixed-batch oracle, for every registered method and for random mixes.

Each row of a batch that mixes adapters must equal that row run alone with its adapter, rows with
no adapter must equal the bare backbone, and every site must match a plain-PyTorch transcription
of its paper's equation.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lookaside.adapters import ADAPTERS, HeadConfig
from lookaside.adapters.base import StackedSite
from lookaside.adapters.bottleneck import BottleneckSite
from lookaside.adapters.convpass import CONV_KERNEL, ConvpassSite
from lookaside.adapters.lora import LoraQVSite
from lookaside.adapters.moa import DenseMoaSite, SoftMoaSite
from lookaside.adapters.prompt import PromptSite
from lookaside.adapters.slot_index import SlotIndex
from lookaside.adapters.stack import AdapterStack
from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.errors import BankFull, InvalidCheckpoint
from lookaside.model import MultiAdapterModel
from lookaside.sites import TokenLayout
from tests.support import randomise
from tests.unit.lookaside.grid_reference import grid_conv_reference
from tests.unit.lookaside.method_cases import AUDIO_METHODS, CASES

TOL = 1e-5
FRAMES = 64  # 8 x 4 grid on the tiny backbone: fast, but still a real 2-D grid
# Audio-visual methods (two streams, clips of segments) have their own oracle: test_avpea.py.
METHODS = AUDIO_METHODS
# Each method's matrix configs, from the one case table (small, non-default shapes).
CONFIGS: dict[str, list[dict[str, object]]] = {m: list(c.mixed) for m, c in CASES.items()}


def test_every_registered_method_is_in_the_matrix() -> None:
    assert set(CONFIGS) == set(METHODS)


def make_model(
    backbone: VisionTransformer, adapters: dict[str, tuple[str, dict[str, object]]], slots: int = 2
) -> MultiAdapterModel:
    bank = AdapterBank(backbone.cfg, capacity=slots)
    for i, (adapter_id, (method, cfg)) in enumerate(adapters.items()):
        bank.add(
            adapter_id,
            method,
            cfg,
            HeadConfig(num_classes=3 + i % 3, pool="cls" if i % 2 else "mean"),
        )
        randomise(bank, adapter_id, seed=100 + i)
    return MultiAdapterModel(backbone, bank)


def run_alone(model: MultiAdapterModel, spec: Tensor, ids: list[str | None]) -> list[Tensor | None]:
    return [model(spec[i : i + 1], [a])[0] for i, a in enumerate(ids)]


def assert_rows_equal(got: list[Tensor | None], expected: list[Tensor | None]) -> None:
    for g, e in zip(got, expected, strict=True):
        if e is None:
            assert g is None
        else:
            assert g is not None
            torch.testing.assert_close(g, e, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("method", METHODS)
def test_mixed_batch_rows_equal_rows_alone(method: str, tiny_backbone: VisionTransformer) -> None:
    cfg_a, cfg_b = (CONFIGS[method] * 2)[:2]
    # Two adapters of one config share a stack (gathered path); a third config gets its own stack;
    # None rows use the bare backbone.
    model = make_model(
        tiny_backbone, {"a": (method, cfg_a), "a2": (method, cfg_a), "b": (method, cfg_b)}
    )
    ids: list[str | None] = ["a", "b", None, "a2", "a", "b", "a2"]
    spec = torch.randn(len(ids), FRAMES, 128)
    with torch.no_grad():
        assert_rows_equal(model(spec, ids), run_alone(model, spec, ids))
        # Uniform batch (no gather) equals rows alone as well.
        assert_rows_equal(model(spec[:3], ["a", "a", "a"]), run_alone(model, spec[:3], ["a"] * 3))


@pytest.mark.parametrize("method", METHODS)
def test_adapter_actually_changes_the_output(method: str, tiny_backbone: VisionTransformer) -> None:
    """Different weights in the same stack give different outputs (routing is not ignored).

    The linear probe has no sites: its tokens must be the bare backbone's, and its logits must be
    its own head applied to them (checked against ``F.layer_norm`` + ``F.linear``), different for
    a different head.
    """
    model = make_model(
        tiny_backbone, {"a": (method, CONFIGS[method][0]), "a2": (method, CONFIGS[method][0])}
    )
    spec = torch.randn(1, FRAMES, 128).expand(2, -1, -1)
    with torch.no_grad():
        with model.bank.route(["a"]) as r:
            tokens_a, _ = tiny_backbone.forward_features(spec[:1], r)
        with model.bank.route(["a2"]) as r:
            tokens_a2, _ = tiny_backbone.forward_features(spec[:1], r)
        bare, _ = tiny_backbone.forward_features(spec[:1])
        logits_a = model.logits(spec[:1], "a")[0]
        logits_a2 = model.logits(spec[:1], "a2")[0]
    if method == "linear":
        assert torch.equal(tokens_a, bare)
        for adapter_id, logits in (("a", logits_a), ("a2", logits_a2)):
            head = model.bank.head(adapter_id)
            pooled = bare[0, :1].mean(0) if head.cfg.pool == "cls" else bare[0, 1:].mean(0)
            normed = F.layer_norm(pooled, pooled.shape, head.norm.weight, head.norm.bias, 1e-5)
            expected = F.linear(normed, head.fc.weight, head.fc.bias)
            torch.testing.assert_close(logits, expected, atol=TOL, rtol=TOL)
        with torch.no_grad():
            fresh = model.bank.head("a")
            fresh.fc.weight.mul_(-1.0)
            flipped = model.logits(spec[:1], "a")[0]
        assert not torch.allclose(flipped, logits_a, atol=1e-3)
        return
    assert not torch.allclose(tokens_a, tokens_a2, atol=1e-4)
    grid = bare.shape[1] - 1  # compare patch tokens: prompt tuning adds tokens
    assert not torch.allclose(tokens_a[:, -grid:], bare[:, -grid:], atol=1e-4)


def test_random_mixes_of_methods_and_ranks(tiny_backbone: VisionTransformer) -> None:
    rng = random.Random(7)
    adapters = {}
    for method, cfgs in CONFIGS.items():
        for j, cfg in enumerate(cfgs):
            adapters[f"{method}-{j}"] = (method, cfg)
    model = make_model(tiny_backbone, adapters, slots=1)
    # A second adapter per stack needs a second slot: capacity is explicit (BankFull), so grow
    # every stack between batches; the grown stacks must keep the first adapter's weights.
    bank = model.bank
    for j, (adapter_id, (method, cfg)) in enumerate(list(adapters.items())):
        twin = f"{adapter_id}-twin"
        if bank.stack_of(adapter_id) is not None:
            with pytest.raises(BankFull, match="grow"):
                bank.add(twin, method, cfg, HeadConfig(num_classes=2))
            bank.grow(method, cfg, 2)
        bank.add(twin, method, cfg, HeadConfig(num_classes=2 + j % 2))
        randomise(bank, twin, seed=500 + j)
        adapters[twin] = (method, cfg)
    choices: list[str | None] = [*adapters, None]
    for batch_size in (1, 5, 12):
        ids = [rng.choice(choices) for _ in range(batch_size)]
        spec = torch.randn(batch_size, FRAMES, 128)
        with torch.no_grad():
            assert_rows_equal(model(spec, ids), run_alone(model, spec, ids))


def test_skewed_batch(tiny_backbone: VisionTransformer) -> None:
    """1 row of one adapter, 15 of another (NOTES §8: test heavily skewed batches)."""
    model = make_model(
        tiny_backbone,
        {"x": ("loaa", CONFIGS["loaa"][0]), "y": ("soft_moa", CONFIGS["soft_moa"][0])},
    )
    ids: list[str | None] = ["y"] * 7 + ["x"] + ["y"] * 8
    spec = torch.randn(len(ids), FRAMES, 128)
    with torch.no_grad():
        assert_rows_equal(model(spec, ids), run_alone(model, spec, ids))


def test_rows_without_adapter_equal_bare_backbone(tiny_backbone: VisionTransformer) -> None:
    model = make_model(tiny_backbone, {"a": ("loaa", CONFIGS["loaa"][0])})
    spec = torch.randn(3, FRAMES, 128)
    with torch.no_grad():
        mixed, _ = tiny_backbone.forward_features(spec, model.bank.route([None, "a", None]))
        bare, _ = tiny_backbone.forward_features(spec)
    torch.testing.assert_close(mixed[[0, 2]], bare[[0, 2]], atol=TOL, rtol=TOL)
    assert not torch.allclose(mixed[1], bare[1], atol=1e-4)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in {"linear", "prompt"}])
def test_fresh_adapter_leaves_backbone_unchanged(
    method: str, tiny_backbone: VisionTransformer
) -> None:
    """Zero-initialised output projections survive construction (NOTES §8: no re-init)."""
    bank = AdapterBank(tiny_backbone.cfg)
    bank.add("fresh", method, CONFIGS[method][0], HeadConfig(num_classes=2), seed=3)
    spec = torch.randn(2, FRAMES, 128)
    with torch.no_grad():
        adapted, _ = tiny_backbone.forward_features(spec, bank.route(["fresh", "fresh"]))
        bare, _ = tiny_backbone.forward_features(spec)
    torch.testing.assert_close(adapted, bare, atol=1e-6, rtol=0)
    # ... but the fresh adapter is not all zeros (it can learn: gradients are non-zero).
    stack = bank.stack_of("fresh")
    assert stack is not None
    assert any(t.abs().sum() > 0 for t in stack.slot_tensors(0).values())


@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_only_adapter_and_head(
    method: str, tiny_backbone: VisionTransformer
) -> None:
    bank = AdapterBank(tiny_backbone.cfg, capacity=1, trainable=True)
    bank.add("t", method, CONFIGS[method][0], HeadConfig(num_classes=3), seed=1)
    model = MultiAdapterModel(tiny_backbone, bank)
    model.train()
    assert not tiny_backbone.training  # frozen by construction
    spec = torch.randn(2, FRAMES, 128)
    loss = F.cross_entropy(model.logits(spec, "t"), torch.tensor([0, 2]))
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in tiny_backbone.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable
    assert all(p.grad is not None for p in trainable)
    assert any(p.grad.abs().sum() > 0 for p in bank.heads.parameters() if p.grad is not None)
    if method != "linear":
        stack = bank.stack_of("t")
        assert stack is not None
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stack.parameters())


def test_backbone_is_never_copied(tiny_backbone: VisionTransformer) -> None:
    ptrs = {n: p.data_ptr() for n, p in tiny_backbone.named_parameters()}
    model = make_model(tiny_backbone, {f"m{i}": (m, CONFIGS[m][0]) for i, m in enumerate(METHODS)})
    for name, p in model.backbone.named_parameters():
        assert p.data_ptr() == ptrs[name]
    backbone_ptrs = set(ptrs.values())
    assert not backbone_ptrs & {p.data_ptr() for p in model.bank.parameters()}


def test_remove_frees_slot_and_reuses_it(tiny_backbone: VisionTransformer) -> None:
    model = make_model(
        tiny_backbone, {"a": ("loaa", CONFIGS["loaa"][0]), "b": ("loaa", CONFIGS["loaa"][0])}
    )
    bank = model.bank
    slot_a = bank.entries["a"].slot
    bank.remove("a")
    stack = bank.stack_of("b")
    assert stack is not None
    assert all(t.abs().sum() == 0 for t in stack.slot_tensors(slot_a).values())
    bank.add("c", "loaa", CONFIGS["loaa"][0], HeadConfig(num_classes=2))
    assert bank.entries["c"].slot == slot_a
    bank.remove("b")
    bank.remove("c")
    assert len(bank.stacks) == 0
    assert len(bank.heads) == 0


# -- each site against a plain transcription of its paper's equation --------------------------


def _bottleneck_ref(
    site: StackedSite, t: dict[str, Tensor], x: Tensor, layout: TokenLayout
) -> Tensor:
    assert isinstance(site, BottleneckSite)
    h = F.gelu(grid_conv_reference(x[None], layout, t["down"], t["down_bias"], site.kernel))
    return grid_conv_reference(h, layout, t["up"], t["up_bias"], site.kernel)[0] * site.scale


def _convpass_ref(
    site: StackedSite, t: dict[str, Tensor], x: Tensor, layout: TokenLayout
) -> Tensor:
    assert isinstance(site, ConvpassSite)
    h = F.gelu(x @ t["down"] + t["down_bias"])
    h = F.gelu(grid_conv_reference(h[None], layout, t["conv"], t["conv_bias"], CONV_KERNEL)[0])
    return (h @ t["up"] + t["up_bias"]) * site.scale


def _lora_ref(site: StackedSite, t: dict[str, Tensor], x: Tensor, layout: TokenLayout) -> Tensor:
    assert isinstance(site, LoraQVSite)
    dq = x @ t["q_a"] @ t["q_b"] * site.scaling
    dv = x @ t["v_a"] @ t["v_b"] * site.scaling
    return torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)


def _expert(t: dict[str, Tensor], e: int, x: Tensor) -> Tensor:
    return F.gelu(x @ t["down"][e] + t["down_bias"][e]) @ t["up"][e] + t["up_bias"][e]


def _dense_moa_ref(
    site: StackedSite, t: dict[str, Tensor], x: Tensor, layout: TokenLayout
) -> Tensor:
    g = torch.softmax(x @ t["router"], dim=-1)  # Eq. 1, per token
    return sum(g[:, e : e + 1] * _expert(t, e, x) for e in range(g.shape[1]))  # type: ignore[return-value]


def _soft_moa_ref(
    site: StackedSite, t: dict[str, Tensor], x: Tensor, layout: TokenLayout
) -> Tensor:
    assert isinstance(site, SoftMoaSite)
    logits = x @ t["router"]
    dispatch = torch.softmax(logits, dim=0)  # Eq. 3: columns, over tokens
    combine = torch.softmax(logits, dim=1)  # Eq. 4: rows, over slots
    slots = dispatch.T @ x
    outs = [_expert(t, j // site.slots_per_expert, slots[j]) for j in range(slots.shape[0])]
    return combine @ torch.stack(outs)


def _prompt_ref(site: StackedSite, t: dict[str, Tensor], x: Tensor, layout: TokenLayout) -> Tensor:
    return t["prompts"]


REFERENCES: dict[type, Callable[[StackedSite, dict[str, Tensor], Tensor, TokenLayout], Tensor]] = {
    BottleneckSite: _bottleneck_ref,
    ConvpassSite: _convpass_ref,
    LoraQVSite: _lora_ref,
    DenseMoaSite: _dense_moa_ref,
    SoftMoaSite: _soft_moa_ref,
    PromptSite: _prompt_ref,
}


@pytest.mark.parametrize("method", [m for m in METHODS if m != "linear"])
def test_sites_match_paper_equations(method: str, tiny_deit: VisionTransformer) -> None:
    cfg = tiny_deit.cfg
    stack = AdapterStack(
        ADAPTERS[method], ADAPTERS[method].parse_config(CONFIGS[method][0]), cfg, 3
    )
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in stack.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    layout = TokenLayout(num_prefix=2, num_prompts=stack.num_prompts, grid=(4, 3))
    slots = [2, 0, 2, 1]
    x = torch.randn(len(slots), layout.num_tokens, cfg.embed_dim)
    index = SlotIndex.of(slots, x.device)
    for _, site in stack.named_sites():
        ref = REFERENCES[type(site)]
        got = site(x, index, layout)
        for i, s in enumerate(slots):
            expected = ref(site, site.slot_tensors(s), x[i], layout)
            torch.testing.assert_close(got[i], expected, atol=1e-5, rtol=1e-5)


def test_moa_single_site_is_added_once(tiny_backbone: VisionTransformer) -> None:
    """A Pfeiffer MoA has one site per block and the block adds it exactly once (NOTES §8)."""
    model = make_model(tiny_backbone, {"m": ("soft_moa", {"num_experts": 2, "rank": 2})})
    stack = model.bank.stack_of("m")
    assert stack is not None
    assert [name.split(".", 2)[2] for name, _ in stack.named_sites()] == ["attn_parallel"] * 4
    spec = torch.randn(1, FRAMES, 128)
    route = model.bank.route(["m"])
    with torch.no_grad():
        x, layout = tiny_backbone.embed(spec)
        for i, block in tiny_backbone.named_blocks():
            h = block.norm1(x)
            site = stack.site(i, "attn.parallel")
            assert site is not None
            x = x + block.attn(h) + site(h, SlotIndex.of([0], x.device), layout)
            x = x + block.mlp(block.norm2(x))
        expected = tiny_backbone.norm(x)
        got, _ = tiny_backbone.forward_features(spec, route)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("problem", ["shape", "dtype", "nan", "missing"])
def test_rejected_adapter_leaves_nothing_behind(
    problem: str, tiny_backbone: VisionTransformer
) -> None:
    """Validation happens before publishing; a bad adapter neither loads nor leaks a stack."""
    donor = make_model(tiny_backbone, {"good": ("loaa", CONFIGS["loaa"][0])}).bank
    tensors = donor.adapter_tensors("good")
    name = next(k for k in tensors if k.endswith("down"))
    if problem == "shape":
        tensors[name] = tensors[name][:-1]
    elif problem == "dtype":
        tensors[name] = tensors[name].to(torch.int32)
    elif problem == "nan":
        tensors[name][0, 0] = float("nan")
    else:
        del tensors[name]
    bank = AdapterBank(tiny_backbone.cfg)
    with pytest.raises(InvalidCheckpoint, match=re.escape(name)):
        bank.add("bad", "loaa", CONFIGS["loaa"][0], HeadConfig(num_classes=3), tensors)
    assert "bad" not in bank
    assert len(bank.stacks) == 0
    assert len(bank.heads) == 0


# -- faults of the papers' reference code (NOTES §8), each with the test that catches it ------


def test_convpass_uses_its_convolution(tiny_backbone: VisionTransformer) -> None:
    """The reference code computed the conv and then used its input; changing the conv's
    off-centre taps must change the output."""
    model = make_model(tiny_backbone, {"c": ("convpass", CONFIGS["convpass"][0])})
    spec = torch.randn(1, FRAMES, 128)
    with torch.no_grad():
        before = model(spec, ["c"])[0]
        stack = model.bank.stack_of("c")
        assert stack is not None
        site = stack.site(0, "attn.parallel")
        assert isinstance(site, ConvpassSite)
        rank = site.conv.shape[2]
        site.conv[0, : rank * 4] += 0.5  # taps (0,0)..(1,0): neighbours, not the centre
        after = model(spec, ["c"])[0]
    assert before is not None
    assert after is not None
    assert not torch.allclose(before, after, atol=1e-4)


def test_head_layernorm_output_is_used(tiny_backbone: VisionTransformer) -> None:
    """A LayerNorm whose output was discarded: the head's norm weights must matter."""
    model = make_model(tiny_backbone, {"a": ("linear", {})})
    spec = torch.randn(2, FRAMES, 128)
    with torch.no_grad():
        before = model.logits(spec, "a")
        model.bank.head("a").norm.weight.mul_(3.0)
        after = model.logits(spec, "a")
    assert not torch.allclose(before, after, atol=1e-4)


def test_lora_initialisation_follows_the_paper(tiny_backbone: VisionTransformer) -> None:
    """A random, B zero (the public AST code had them reversed)."""
    bank = AdapterBank(tiny_backbone.cfg)
    bank.add("l", "lora", {"rank": 4}, HeadConfig(num_classes=2), seed=0)
    tensors = bank.adapter_tensors("l")
    for block in range(tiny_backbone.cfg.depth):
        for proj in ("q", "v"):
            assert tensors[f"blocks.{block}.attn_qkv.{proj}_a"].abs().sum() > 0
            assert tensors[f"blocks.{block}.attn_qkv.{proj}_b"].abs().sum() == 0


def test_exported_tensors_are_copies(tiny_backbone: VisionTransformer) -> None:
    """Best-model selection kept references to live weights; exports must be snapshots."""
    model = make_model(tiny_backbone, {"a": ("loaa", CONFIGS["loaa"][0])})
    snapshot = model.bank.adapter_tensors("a")
    frozen = {k: v.clone() for k, v in snapshot.items()}
    with torch.no_grad():
        for p in model.bank.parameters():
            p.add_(1.0)
    for name, tensor in snapshot.items():
        torch.testing.assert_close(tensor, frozen[name])


def test_add_remove_cycles_keep_memory_flat(tiny_backbone: VisionTransformer) -> None:
    """Unload frees everything: repeated upload/delete does not grow the bank."""
    bank = AdapterBank(tiny_backbone.cfg, capacity=2)
    bank.add("resident", "loaa", CONFIGS["loaa"][0], HeadConfig(num_classes=3))
    baseline = sum(p.numel() for p in bank.parameters())
    donor = make_model(tiny_backbone, {"x": ("soft_moa", CONFIGS["soft_moa"][0])}).bank
    tensors = donor.adapter_tensors("x")
    for i in range(30):
        bank.add(f"x{i}", "soft_moa", CONFIGS["soft_moa"][0], HeadConfig(num_classes=3), tensors)
        bank.add(f"y{i}", "loaa", CONFIGS["loaa"][0], HeadConfig(num_classes=3))
        bank.remove(f"x{i}")
        bank.remove(f"y{i}")
    assert sum(p.numel() for p in bank.parameters()) == baseline
    assert bank.ids() == ["resident"]


@pytest.mark.parametrize(
    ("method", "config", "match"),
    [
        ("bottleneck", {"sites": ["attn", "attn"]}, "each once"),
        ("moa_typo", {}, "choose one of"),
        ("loaa", {"kernels": "attn=T"}, "attn:T,ffn:F"),
        ("loaa", {"kernels": {"attn": "X"}}, "'T', 'F' or 'L'"),
        ("lora", {"rank": 0}, "greater than 0"),
        ("soft_moa", {"unknown_field": 1}, "Extra inputs"),
    ],
)
def test_bad_configs_are_refused_with_a_reason(
    method: str, config: dict[str, object], match: str, tiny_backbone: VisionTransformer
) -> None:
    bank = AdapterBank(tiny_backbone.cfg)
    with pytest.raises(ValueError, match=match):
        bank.add("x", method, config, HeadConfig(num_classes=2))
    assert len(bank.stacks) == 0


def test_layers_outside_the_backbone_are_refused(tiny_backbone: VisionTransformer) -> None:
    with pytest.raises(ValueError, match=r"layers \[7\] do not exist"):
        AdapterBank(tiny_backbone.cfg).add("x", "aat", {"layers": [7]}, HeadConfig(num_classes=2))


def test_grid_methods_refuse_overlapping_patches() -> None:
    from lookaside.backbones import PRESETS

    bank = AdapterBank(PRESETS["ast_base_stride10"])
    with pytest.raises(ValueError, match="stride = patch size"):
        bank.add("x", "loaa", {}, HeadConfig(num_classes=2))
    bank.add("ok", "bottleneck", {}, HeadConfig(num_classes=2))  # no grid needed


def test_bf16_bank_under_autocast(tiny_backbone: VisionTransformer) -> None:
    """A server stores adapters in its compute dtype: a bf16 bank beside the fp32 backbone under
    autocast keeps the per-row oracle (bf16 tolerance) and stays close to the fp32 result."""
    adapters = {f"{m}-{i}": (m, CONFIGS[m][0]) for i, m in enumerate(METHODS)}
    fp32 = make_model(tiny_backbone, adapters)
    bank16 = AdapterBank(tiny_backbone.cfg, capacity=2, dtype=torch.bfloat16)
    for adapter_id, (method, cfg) in adapters.items():
        bank16.add(
            adapter_id,
            method,
            cfg,
            fp32.bank.head(adapter_id).cfg,
            fp32.bank.adapter_tensors(adapter_id),
        )
    bf16 = MultiAdapterModel(tiny_backbone, bank16)
    ids: list[str | None] = [*adapters, None]
    spec = torch.randn(len(ids), FRAMES, 128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = bf16(spec, ids)
        alone = run_alone(bf16, spec, ids)
    with torch.no_grad():
        reference = fp32(spec, ids)
    for m, a, r in zip(mixed, alone, reference, strict=True):
        if r is None:
            assert m is None
            continue
        assert m is not None
        assert a is not None
        assert m.dtype == torch.bfloat16
        torch.testing.assert_close(m.float(), a.float(), atol=3e-2, rtol=3e-2)
        torch.testing.assert_close(m.float(), r, atol=0.15, rtol=0.1)
