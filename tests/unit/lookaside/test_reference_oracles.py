"""Whole-model oracles written from each paper's equation, independent of the batched path.

The mixed-batch oracle (``test_adapters_matrix``) runs each row alone through the same route and
site code, so it only checks the gathered kernels against the uniform ones. The references here
never call a site, a route, a kernel of ``lookaside.adapters.ops`` or the backbone's forward: they
read the backbone's state dict and one adapter's tensors (``bank.adapter_tensors``) and compute
every token with ``torch.nn.functional`` (layer norm, linear, explicit softmax attention,
``conv2d`` on the token grid, explicit MoA dispatch/combine, prompt insertion), in float64, row by
row. LoRA is applied as merged weights (``W + s (A B)^T`` in the q and v rows of ``qkv``).

Each registered method must have a case here (the list is checked against ``ADAPTERS``), every
adapter tensor must be read by its reference, and every site position must be used by some method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lookaside.adapters import ADAPTERS, HeadConfig
from lookaside.adapters.base import SiteContext
from lookaside.backbone import VisionTransformer
from lookaside.backbone_config import BackboneConfig
from lookaside.bank import AdapterBank
from lookaside.model import MultiAdapterModel
from lookaside.sites import AUDIO_VISUAL_POSITIONS, SITE_POSITIONS, SitePosition
from tests.support import randomise
from tests.unit.lookaside.method_cases import case_id, oracle_cases

TOL = 1e-5
FRAMES = 48  # 128 mel x 48 frames -> an 8 x 3 grid (not square), equal to the stored grid
MEL = 128

# Methods at configs that use every site position the method can use (the one case table).
CASES: list[tuple[str, dict[str, object]]] = oracle_cases()


def _params(case: tuple[str, dict[str, object]]) -> object:
    return pytest.param(*case, id=case_id(*case))


# -- a small backbone with every weight random (zero biases / unit norms would hide mix-ups) ----

BACKBONES = {
    "cls": BackboneConfig(
        name="oracle_vit", embed_dim=32, depth=4, num_heads=4, mlp_ratio=2.0, num_frames=FRAMES
    ),
    "cls+dist": BackboneConfig(
        name="oracle_deit",
        embed_dim=32,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        num_frames=FRAMES,
        distilled=True,
    ),
}


@pytest.fixture(scope="module", params=list(BACKBONES))
def backbone(request: pytest.FixtureRequest) -> VisionTransformer:
    model = VisionTransformer(BACKBONES[request.param], source="random:oracle")
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif p.dim() >= 2 and name.endswith("weight"):
                fan_in = p[0].numel()
                p.copy_(noise / math.sqrt(fan_in))
            else:  # tokens and position embedding
                p.copy_(0.5 * noise)
    return model


# -- the plain reference -------------------------------------------------------------------

Grid = tuple[int, int]
KERNELS = {"T": (1, 3), "F": (3, 1), "L": (1, 1)}


@dataclass
class Adapter:
    """One adapter as the reference sees it: method, config fields, tensors (float64)."""

    method: str
    cfg: dict[str, object]
    tensors: dict[str, Tensor]
    head: HeadConfig
    read: set[str] = field(default_factory=set)

    def get(self, name: str) -> Tensor:
        self.read.add(name)
        return self.tensors[name]

    def site(self, layer: int, position: SitePosition) -> dict[str, Tensor] | None:
        """This adapter's tensors at (layer, position), or None if it has no site there."""
        prefix = f"blocks.{layer}.{position.replace('.', '_')}."
        names = [n for n in self.tensors if n.startswith(prefix)]
        if not names:
            return None
        return {n.removeprefix(prefix): self.get(n) for n in names}


def conv_tokens(
    x: Tensor, unfolded: Tensor, bias: Tensor, kernel: tuple[int, int], n_special: int, grid: Grid
) -> Tensor:
    """A ``kernel`` conv over the token grid (zero padding) with ``F.conv2d``; each special token
    is a 1x1 image, so only the centre tap sees it.

    ``unfolded`` is the checkpoint layout ``[kh*kw*Cin, Cout]``: taps in row-major kernel order
    (frequency, then time), channels inside each tap.
    """
    kh, kw = kernel
    cin = unfolded.shape[0] // (kh * kw)
    weight = unfolded.reshape(kh, kw, cin, -1).permute(3, 2, 0, 1)  # [Cout, Cin, kh, kw]
    fg, tg = grid
    n = x.shape[0]
    image = x[:, n_special:].reshape(n, fg, tg, cin).permute(0, 3, 1, 2)
    out = F.conv2d(image, weight, bias, padding=(kh // 2, kw // 2))
    grid_out = out.permute(0, 2, 3, 1).reshape(n, fg * tg, -1)
    centre = weight[:, :, kh // 2, kw // 2]
    special_out = F.linear(x[:, :n_special], centre, bias)
    return torch.cat([special_out, grid_out], dim=1)


def bottleneck(
    t: dict[str, Tensor], h: Tensor, kernel: tuple[int, int], n_special: int, grid: Grid
) -> Tensor:
    """Houlsby/Pfeiffer bottleneck ``up(gelu(down(h)))``; LoAA: both projections are convs."""
    z = F.gelu(conv_tokens(h, t["down"], t["down_bias"], kernel, n_special, grid))
    return conv_tokens(z, t["up"], t["up_bias"], kernel, n_special, grid)


def convpass(t: dict[str, Tensor], h: Tensor, n_special: int, grid: Grid) -> Tensor:
    """Convpass: linear down, GELU, 3x3 conv on the grid, GELU, linear up."""
    z = F.gelu(F.linear(h, t["down"].T, t["down_bias"]))
    z = F.gelu(conv_tokens(z, t["conv"], t["conv_bias"], (3, 3), n_special, grid))
    return F.linear(z, t["up"].T, t["up_bias"])


def expert(t: dict[str, Tensor], e: int, x: Tensor) -> Tensor:
    return (
        F.linear(F.gelu(F.linear(x, t["down"][e].T, t["down_bias"][e])), t["up"][e].T)
        + t["up_bias"][e]
    )


def dense_moa(t: dict[str, Tensor], h: Tensor) -> Tensor:
    """Dense-MoA Eq. 1-2: per-token softmax gates over experts, gated sum of expert outputs."""
    gates = torch.softmax(h @ t["router"], dim=-1)
    return sum(  # type: ignore[return-value]
        gates[..., e : e + 1] * expert(t, e, h) for e in range(t["down"].shape[0])
    )


def soft_moa(t: dict[str, Tensor], h: Tensor, slots_per_expert: int) -> Tensor:
    """Soft-MoA Eq. 3-4 for one row: dispatch softmax over tokens, combine softmax over slots."""
    (x,) = h  # one row
    logits = x @ t["router"]  # [L, N*p]
    dispatch = torch.softmax(logits, dim=0)
    combine = torch.softmax(logits, dim=1)
    slots = dispatch.T @ x  # [N*p, D]
    outs = torch.stack([expert(t, j // slots_per_expert, slots[j]) for j in range(len(slots))])
    return (combine @ outs)[None]


def attention(h: Tensor, w_qkv: Tensor, b_qkv: Tensor, heads: int) -> Tensor:
    """Explicit softmax attention (no SDPA): ``softmax(q k^T / sqrt(d)) v`` per head."""
    n, L, D = h.shape
    qkv = F.linear(h, w_qkv, b_qkv)
    q, k, v = qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :]
    d = D // heads

    def split(t: Tensor) -> Tensor:
        return t.reshape(n, L, heads, d).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d)
    return (scores.softmax(dim=-1) @ split(v)).transpose(1, 2).reshape(n, L, D)


def reference_tokens(
    w: dict[str, Tensor], cfg: BackboneConfig, spec: Tensor, adapter: Adapter | None
) -> tuple[Tensor, int]:
    """Final-norm tokens of one row (``spec`` ``[1, frames, mel]``) and its prompt count."""
    D, eps = cfg.embed_dim, cfg.norm_eps
    image = spec.transpose(1, 2).unsqueeze(1)
    patches = F.conv2d(
        image, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=cfg.patch_stride
    )
    grid = (patches.shape[2], patches.shape[3])
    assert grid == cfg.source_grid  # no position resampling in this oracle
    prefix = [w["cls_token"]] + ([w["dist_token"]] if cfg.distilled else [])
    x = torch.cat([*prefix, patches.flatten(2).transpose(1, 2)], dim=1) + w["pos_embed"]
    n_prefix = len(prefix)
    method = adapter.method if adapter is not None else "none"
    acfg = adapter.cfg if adapter is not None else {}
    layers = acfg.get("layers")
    blocks = list(range(cfg.depth)) if layers is None else sorted(layers)  # type: ignore[call-overload]
    n_prompts = 0
    for i in range(cfg.depth):
        p = f"blocks.{i}."

        def site(position: SitePosition, i: int = i) -> dict[str, Tensor] | None:
            return adapter.site(i, position) if adapter is not None else None

        # Prompt tuning (VPT-deep): the prompt tokens enter just before the first prompted block
        # (earlier blocks are the plain ViT); each prompted block overwrites them with its own.
        prompts = site("tokens")
        if method == "prompt" and i in blocks:
            assert prompts is not None
            if n_prompts == 0:
                n_prompts = prompts["prompts"].shape[0]
                x = torch.cat([x[:, :n_prefix], prompts["prompts"][None], x[:, n_prefix:]], dim=1)
            else:
                x = torch.cat(
                    [x[:, :n_prefix], prompts["prompts"][None], x[:, n_prefix + n_prompts :]], dim=1
                )
        n_special = n_prefix + n_prompts

        # Attention sub-layer. LoRA: merged weights W + (alpha/r) (A B)^T in the q and v rows.
        w_qkv = w[p + "attn.qkv.weight"].clone()
        lora = site("attn.qkv")
        if lora is not None:
            assert method == "lora"
            scaling = float(acfg.get("alpha", 8.0)) / float(acfg["rank"])  # type: ignore[arg-type]
            w_qkv[:D] += scaling * (lora["q_a"] @ lora["q_b"]).T
            w_qkv[2 * D :] += scaling * (lora["v_a"] @ lora["v_b"]).T
        h = F.layer_norm(x, (D,), w[p + "norm1.weight"], w[p + "norm1.bias"], eps)
        y = attention(h, w_qkv, w[p + "attn.qkv.bias"], cfg.num_heads)
        y = F.linear(y, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        y = y + parallel(method, acfg, site("attn.parallel"), "attn", h, n_special, grid)
        post = site("attn.post")
        if post is not None:  # AAT's spatial adapter after MHSA, with its own shortcut
            assert method == "aat"
            y = y + bottleneck(post, y, (1, 1), n_special, grid)
        x = x + y

        # FFN sub-layer (AAT's MLP adapter is parallel, without a shortcut, scaled).
        h = F.layer_norm(x, (D,), w[p + "norm2.weight"], w[p + "norm2.bias"], eps)
        y = F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])
        y = F.linear(F.gelu(y), w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
        y = y + parallel(method, acfg, site("ffn.parallel"), "ffn", h, n_special, grid)
        x = x + y
    return F.layer_norm(x, (D,), w["norm.weight"], w["norm.bias"], eps), n_prompts


def parallel(
    method: str,
    acfg: dict[str, object],
    t: dict[str, Tensor] | None,
    sublayer: str,
    h: Tensor,
    n_special: int,
    grid: Grid,
) -> Tensor | float:
    """The parallel adapter ``f(h)`` beside one sub-layer (0 when the adapter has none there)."""
    if t is None:
        return 0.0
    scale = float(acfg.get("scale", 1.0))  # type: ignore[arg-type]
    if method == "bottleneck":
        return scale * bottleneck(t, h, (1, 1), n_special, grid)
    if method == "loaa":
        spec = dict(pair.split(":") for pair in str(acfg["kernels"]).split(","))
        return scale * bottleneck(t, h, KERNELS[spec[sublayer]], n_special, grid)
    if method == "convpass":
        return scale * convpass(t, h, n_special, grid)
    if method == "dense_moa":
        return dense_moa(t, h)
    if method == "soft_moa":
        return soft_moa(t, h, int(acfg.get("slots_per_expert", 1)))  # type: ignore[call-overload]
    if method == "aat":
        assert sublayer == "ffn"
        return float(acfg.get("mlp_scale", 0.5)) * bottleneck(t, h, (1, 1), n_special, grid)  # type: ignore[arg-type]
    raise AssertionError(f"no reference for a {sublayer} parallel site of {method!r}")


def reference_logits(tokens: Tensor, adapter: Adapter, n_prefix: int, n_prompts: int) -> Tensor:
    """AST's head: pooled tokens -> LayerNorm -> Linear."""
    if adapter.head.pool == "cls":
        pooled = tokens[:, :n_prefix].mean(dim=1)
    else:
        pooled = tokens[:, n_prefix + n_prompts :].mean(dim=1)
    norm = F.layer_norm(
        pooled, pooled.shape[-1:], adapter.get("head.norm.weight"), adapter.get("head.norm.bias")
    )
    return F.linear(norm, adapter.get("head.fc.weight"), adapter.get("head.fc.bias"))


# -- the tests -------------------------------------------------------------------------------


def test_every_registered_method_has_an_oracle_case() -> None:
    # audio-visual methods (two streams) have their plain reference in test_avpea.py
    assert {m for m, _ in CASES} == {m for m, spec in ADAPTERS.items() if "clip" in spec.tasks}


def test_every_site_position_is_used_by_a_method_and_covered_here() -> None:
    """Positions no method uses are removed from the vocabulary; every used one is tested."""
    cfg = BACKBONES["cls"]
    registered = set()
    for method in ADAPTERS.values():
        for case_method, raw in CASES:
            if case_method == method.name:
                block = SiteContext.for_block(cfg, 0, 1)
                registered |= set(method.make_sites(method.parse_config(raw), block))
    assert registered == set(SITE_POSITIONS) - set(AUDIO_VISUAL_POSITIONS)  # AV: test_avpea.py


def _bank(backbone: VisionTransformer, method: str, raw: dict[str, object]) -> AdapterBank:
    bank = AdapterBank(backbone.cfg)
    bank.add("a", method, raw, HeadConfig(num_classes=3, pool="cls"))
    bank.add("b", method, raw, HeadConfig(num_classes=3, pool="mean"))
    randomise(bank, "a", seed=21)
    randomise(bank, "b", seed=22)
    return bank


def _adapter(bank: AdapterBank, adapter_id: str, method: str, raw: dict[str, object]) -> Adapter:
    tensors = {k: v.double() for k, v in bank.adapter_tensors(adapter_id).items()}
    return Adapter(method, raw, tensors, bank.head(adapter_id).cfg)


def _batches(method: str) -> list[list[str | None]]:
    whole: list[str | None] = ["a", "b", "b", "a"]  # one stack, two slots: the gathered path
    uniform: list[str | None] = ["b", "b"]  # one slot for the whole batch
    if method == "prompt":  # rows with prompts cannot share a pass with rows without
        return [whole, uniform]
    return [["a", None, "b", "a"], whole, uniform]


@pytest.mark.parametrize(("method", "raw"), [_params(c) for c in CASES])
def test_model_matches_plain_reference(
    method: str, raw: dict[str, object], backbone: VisionTransformer
) -> None:
    """Tokens and logits of mixed, gathered and uniform batches (with and without autograd)
    equal a per-row plain-PyTorch transcription of the method's paper."""
    bank = _bank(backbone, method, raw)
    model = MultiAdapterModel(backbone, bank)
    adapters = {i: _adapter(bank, i, method, raw) for i in ("a", "b")}
    w = {k: v.double() for k, v in backbone.state_dict().items()}
    n_prefix = backbone.cfg.num_prefix_tokens
    gen = torch.Generator().manual_seed(3)
    for ids in _batches(method):
        spec = torch.randn(len(ids), FRAMES, MEL, generator=gen)
        expected, prompt_counts = [], set()
        for row, adapter_id in enumerate(ids):
            adapter = adapters[adapter_id] if adapter_id is not None else None
            tokens, n_prompts = reference_tokens(
                w, backbone.cfg, spec[row : row + 1].double(), adapter
            )
            expected.append(tokens)
            prompt_counts.add(n_prompts)
        (n_prompts,) = prompt_counts
        for grad in (False, True):  # in-place accumulation (inference) and the autograd path
            with torch.set_grad_enabled(grad), bank.route(ids) as route:
                got, layout = backbone.forward_features(spec, route)
            assert layout.num_prompts == n_prompts
            torch.testing.assert_close(
                got.double(),
                torch.cat(expected),
                atol=TOL,
                rtol=TOL,
                msg=f"rows {ids}, grad {grad}",
            )
        with torch.no_grad():
            logits = model(spec, ids)
        for row, adapter_id in enumerate(ids):
            if adapter_id is None:
                assert logits[row] is None
                continue
            ref = reference_logits(expected[row], adapters[adapter_id], n_prefix, n_prompts)
            got_row = logits[row]
            assert got_row is not None
            torch.testing.assert_close(got_row.double(), ref[0], atol=TOL, rtol=TOL)
    for adapter in adapters.values():  # the reference read every tensor of the adapter
        assert adapter.read == set(adapter.tensors)


def test_reference_is_sensitive_to_each_site(backbone: VisionTransformer) -> None:
    """The oracle itself: changing one adapter tensor changes the reference's tokens."""
    raw: dict[str, object] = {"rank": 4, "mlp_scale": 0.5}
    bank = _bank(backbone, "aat", raw)
    adapter = _adapter(bank, "a", "aat", raw)
    w = {k: v.double() for k, v in backbone.state_dict().items()}
    spec = torch.randn(1, FRAMES, MEL, dtype=torch.float64)
    base, _ = reference_tokens(w, backbone.cfg, spec, adapter)
    for name in ("blocks.0.attn_post.up", "blocks.3.ffn_parallel.up"):
        # One entry (a change equal across channels would vanish in the next LayerNorm).
        original = adapter.tensors[name]
        adapter.tensors[name] = original.clone()
        adapter.tensors[name][0, 1] += 0.5
        changed, _ = reference_tokens(w, backbone.cfg, spec, adapter)
        assert not torch.allclose(base, changed, atol=1e-4), name
        adapter.tensors[name] = original
