"""MultiAdapterModel: bank/backbone compatibility, routes released, heads, prompts' first block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lookaside.adapters import ADAPTERS, HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.errors import AdapterNotFound, ConfigError
from lookaside.model import MultiAdapterModel
from lookaside.sites import Route
from tests.support import bank_bookkeeping, randomise

FRAMES = 64
LOAA = {"rank": 3, "kernels": "attn:T,ffn:F"}


def _model(
    backbone: VisionTransformer, **adapters: tuple[str, dict[str, object]]
) -> MultiAdapterModel:
    bank = AdapterBank.for_backbone(backbone, capacity=2)
    for i, (adapter_id, (method, cfg)) in enumerate(adapters.items()):
        bank.add(adapter_id, method, cfg, HeadConfig(num_classes=3))
        randomise(bank, adapter_id, seed=10 + i)
    return MultiAdapterModel(backbone, bank)


def test_bank_for_another_config_is_refused(
    tiny_backbone: VisionTransformer, tiny_deit: VisionTransformer
) -> None:
    with pytest.raises(ConfigError, match="another backbone config"):
        MultiAdapterModel(tiny_backbone, AdapterBank(tiny_deit.cfg))


def test_bank_on_another_device_is_refused(tiny_backbone: VisionTransformer) -> None:
    bank = AdapterBank(tiny_backbone.cfg, device="meta")
    with pytest.raises(ConfigError, match="lives on meta but the backbone on cpu"):
        MultiAdapterModel(tiny_backbone, bank)


def test_bank_for_other_weights_is_refused(tiny_backbone: VisionTransformer) -> None:
    bank = AdapterBank(tiny_backbone.cfg, fingerprint="0123456789abcdef")
    with pytest.raises(ConfigError, match="fingerprint"):
        MultiAdapterModel(tiny_backbone, bank)
    MultiAdapterModel(tiny_backbone, AdapterBank.for_backbone(tiny_backbone))


def test_for_backbone_takes_device_and_dtype(tiny_backbone: VisionTransformer) -> None:
    half = VisionTransformer(tiny_backbone.cfg)
    half.load_weights(tiny_backbone.state_dict())
    half.to(torch.bfloat16)
    bank = AdapterBank.for_backbone(half)
    assert bank.dtype == torch.bfloat16
    assert bank.device == torch.device("cpu")
    assert bank.fingerprint == half.fingerprint()
    assert AdapterBank.for_backbone(half, dtype=torch.float32).dtype == torch.float32


def test_bf16_bank_without_autocast_is_refused_clearly(tiny_backbone: VisionTransformer) -> None:
    """Issue 7 item 4: no raw matmul dtype error; the message names both fixes."""
    bank = AdapterBank.for_backbone(tiny_backbone, dtype=torch.bfloat16)
    bank.add("a", "lora", {"rank": 2}, HeadConfig(num_classes=3))
    model = MultiAdapterModel(tiny_backbone, bank)
    idle = bank_bookkeeping(bank)
    spec = torch.randn(2, FRAMES, 128)
    for call in (lambda: model(spec, ["a", None]), lambda: model.logits(spec, "a")):
        with pytest.raises(ConfigError, match=r"torch\.autocast\('cpu', dtype=torch\.bfloat16\)"):
            call()
    assert bank_bookkeeping(bank) == idle
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(spec, ["a", None])
    assert logits[0] is not None
    assert logits[0].dtype == torch.bfloat16
    assert logits[1] is None


def test_forward_releases_its_routes_even_on_error(
    tiny_backbone: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tiny_backbone, a=("loaa", LOAA), p=("prompt", {"num_tokens": 2}))
    bank = model.bank
    idle = bank_bookkeeping(bank)
    spec = torch.randn(3, FRAMES, 128)
    with torch.no_grad():
        model(spec, ["a", "p", None])  # two passes (prompt rows apart), two routes
        model.logits(spec, "a")
    assert bank_bookkeeping(bank) == idle

    def broken(spec: Tensor, route: Route | None = None) -> tuple[Tensor, object]:
        raise RuntimeError("device fell over")

    monkeypatch.setattr(tiny_backbone, "forward_features", broken)
    for call in (lambda: model(spec, ["a", "p", None]), lambda: model.logits(spec, "a")):
        with pytest.raises(RuntimeError, match="fell over"):
            call()
    assert bank_bookkeeping(bank) == idle
    bank.remove("a")
    bank.remove("p")
    assert len(bank.stacks) == 0  # nothing held them: freed at once


def test_forward_finishes_with_the_adapters_it_started_with(
    tiny_backbone: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remove (and a new add of the same id) landing mid-forward changes nothing for the rows
    already in flight: same slot weights, same head."""
    model = _model(tiny_backbone, a=("loaa", LOAA), b=("loaa", LOAA))
    bank = model.bank
    spec = torch.randn(2, FRAMES, 128)
    with torch.no_grad():
        expected = model(spec, ["a", "b"])
    plain = tiny_backbone.forward_features

    def remove_midway(spec: Tensor, route: Route | None = None) -> object:
        bank.remove("a")
        bank.add("a", "linear", {}, HeadConfig(num_classes=5), seed=9)  # a different "a"
        return plain(spec, route)

    monkeypatch.setattr(tiny_backbone, "forward_features", remove_midway)
    with torch.no_grad():
        got = model(spec, ["a", "b"])
    for g, e in zip(got, expected, strict=True):
        assert g is not None
        assert e is not None
        assert torch.equal(g, e)
    monkeypatch.undo()
    with torch.no_grad():
        now = model(spec, ["a", "b"])[0]
    assert now is not None
    assert now.shape == (5,)


def test_unknown_adapter_is_refused_before_the_forward(tiny_backbone: VisionTransformer) -> None:
    model = _model(tiny_backbone, a=("loaa", LOAA))
    with pytest.raises(AdapterNotFound, match="'nope' is not loaded; loaded: a"):
        model(torch.randn(1, FRAMES, 128), ["nope"])


def test_head_init_follows_the_seed_not_the_global_generator(
    tiny_backbone: VisionTransformer,
) -> None:
    def fresh_head(seed: int, global_seed: int) -> dict[str, Tensor]:
        torch.manual_seed(global_seed)
        bank = AdapterBank(tiny_backbone.cfg)
        bank.add("h", "linear", {}, HeadConfig(num_classes=4), seed=seed)
        return bank.adapter_tensors("h")

    a, b, c = fresh_head(1, 100), fresh_head(1, 200), fresh_head(2, 100)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(a["head.fc.weight"], c["head.fc.weight"])
    assert a["head.fc.weight"].std() > 0.01  # really initialised (std 0.02), not zeros
    assert torch.equal(a["head.fc.bias"], torch.zeros(4))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    AdapterBank(tiny_backbone.cfg).add("h", "convpass", {"rank": 2}, HeadConfig(num_classes=3))
    assert torch.equal(torch.get_rng_state(), state)  # building an adapter draws nothing global


def test_prompt_layers_start_later_leave_earlier_blocks_plain(
    tiny_backbone: VisionTransformer,
) -> None:
    """Issue 7 item 5: prompts on blocks (2, 3) are inserted just before block 2, so blocks 0 and
    1 compute exactly what the plain ViT computes (no zero placeholders in their attention)."""
    model = _model(tiny_backbone, p=("prompt", {"num_tokens": 3, "layers": [2, 3]}))
    route = model.bank.route(["p", "p"])
    assert route.prompt_start == 2
    assert route.num_prompts == 3
    spec = torch.randn(2, FRAMES, 128)
    outputs: dict[str, list[Tensor]] = {"plain": [], "prompt": []}
    current = "plain"

    def keep(_module: torch.nn.Module, _args: object, out: Tensor) -> None:
        outputs[current].append(out.detach().clone())

    handles = [b.register_forward_hook(keep) for _, b in tiny_backbone.named_blocks()]
    try:
        with torch.no_grad():
            tiny_backbone.forward_features(spec)
            current = "prompt"
            with route:
                tiny_backbone.forward_features(spec, route)
    finally:
        for h in handles:
            h.remove()
    plain, prompted = outputs["plain"], outputs["prompt"]
    for block in (0, 1):
        assert torch.equal(prompted[block], plain[block]), block
    layout_tokens = plain[2].shape[1]
    assert prompted[2].shape[1] == layout_tokens + 3
    assert not torch.allclose(prompted[3][:, -8:], plain[3][:, -8:], atol=1e-4)


def test_rows_with_different_prompt_starts_run_in_separate_passes(
    tiny_backbone: VisionTransformer,
) -> None:
    model = _model(
        tiny_backbone,
        early=("prompt", {"num_tokens": 2}),
        late=("prompt", {"num_tokens": 2, "layers": [1, 3]}),
        a=("loaa", LOAA),
    )
    bank = model.bank
    ids: list[str | None] = ["early", "late", "a", None, "late"]
    assert sorted(bank.partition(ids)) == [[0], [1, 4], [2, 3]]
    with pytest.raises(ConfigError, match="partition"):
        bank.route(["early", "late"])
    spec = torch.randn(len(ids), FRAMES, 128)
    with torch.no_grad():
        mixed = model(spec, ids)
        alone = [model(spec[i : i + 1], [a])[0] for i, a in enumerate(ids)]
    for m, a in zip(mixed, alone, strict=True):
        if a is None:
            assert m is None
        else:
            assert m is not None
            torch.testing.assert_close(m, a, atol=1e-5, rtol=1e-5)


def test_first_layer_of_a_config(tiny_backbone: VisionTransformer) -> None:
    cfg = ADAPTERS["prompt"].parse_config({"layers": [3, 1]})
    assert cfg.first_layer(4) == 1
    assert ADAPTERS["prompt"].parse_config({}).first_layer(4) == 0
    with pytest.raises(ValueError, match="at least one block"):
        ADAPTERS["prompt"].parse_config({"layers": []})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", [m for m in ADAPTERS if m != "linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fresh_adapters_initialise_on_cuda(
    method: str, dtype: torch.dtype, tiny_backbone: VisionTransformer
) -> None:
    """Issue 7 item 4: init_slot drew CPU tensors into CUDA parameters (Convpass' eye)."""
    cpu = AdapterBank(tiny_backbone.cfg, dtype=dtype)
    gpu = AdapterBank(tiny_backbone.cfg, device="cuda", dtype=dtype)
    cpu.add("f", method, {}, HeadConfig(num_classes=3), seed=4)
    gpu.add("f", method, {}, HeadConfig(num_classes=3), seed=4)
    for name, tensor in cpu.adapter_tensors("f").items():
        other = gpu.adapter_tensors("f")[name]
        assert other.device.type == "cuda"
        assert other.dtype == dtype
        torch.testing.assert_close(other.cpu(), tensor, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_bank_on_cuda_under_autocast(tiny_backbone: VisionTransformer) -> None:
    backbone = VisionTransformer(tiny_backbone.cfg)
    backbone.load_weights(tiny_backbone.state_dict())
    backbone.to("cuda")
    bank = AdapterBank.for_backbone(backbone, dtype=torch.bfloat16)
    bank.add("a", "loaa", LOAA, HeadConfig(num_classes=3), seed=1)
    model = MultiAdapterModel(backbone, bank)
    spec = torch.randn(2, FRAMES, 128, device="cuda")
    with pytest.raises(ConfigError, match="autocast"):
        model(spec, ["a", "a"])
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(spec, ["a", None])
    assert out[0] is not None
    assert out[0].dtype == torch.bfloat16
    loss = F.cross_entropy(out[0][None].float(), torch.tensor([1], device="cuda"))
    assert torch.isfinite(loss)
