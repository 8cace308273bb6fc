"""The ONNX Runtime feature runner against eager PyTorch: every method, mixed batches, swaps.

The reference is the same model with no runner (eager PyTorch, the torch engine's path): each
row's logits must agree within 1e-4. Graph exports are slow (seconds per stack), so one module
fixture builds the graph of every one-stream method once and the tests share it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lookaside.adapters import HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.backbones import build_random
from lookaside.bank import AdapterBank
from lookaside.model import MultiAdapterModel
from lookaside.onnx import runner as runner_module
from lookaside.onnx.cache import GraphCache
from lookaside.onnx.export import GraphSpec
from lookaside.onnx.runner import OrtFeatures
from tests.support import randomise
from tests.unit.lookaside.method_cases import AUDIO_METHODS, CASES

TOL = 1e-4
FRAMES = 64


def _add(
    bank: AdapterBank, adapter_id: str, method: str, cfg: dict[str, object], seed: int
) -> None:
    bank.add(adapter_id, method, cfg, HeadConfig(num_classes=3 + seed % 3))
    randomise(bank, adapter_id, seed=seed)


def _one_adapter(
    backbone: VisionTransformer, method: str, cfg: dict[str, object], seed: int
) -> MultiAdapterModel:
    """A model whose bank holds one adapter, ``a``."""
    bank = AdapterBank(backbone.cfg, capacity=2)
    _add(bank, "a", method, cfg, seed=seed)
    return MultiAdapterModel(backbone, bank).eval()


def _pair(model: MultiAdapterModel, spec: Tensor, ids: Sequence[str | None]) -> float:
    """Largest difference between the runner's and eager PyTorch's logits over every row."""
    runner = model.runner
    with torch.inference_mode():
        model.runner = None
        want = model(spec, ids)
        model.runner = runner
        got = model(spec, ids)
    worst = 0.0
    for w, g in zip(want, got, strict=True):
        assert (w is None) == (g is None)
        if w is not None and g is not None:
            assert w.shape == g.shape
            worst = max(worst, float((w - g).abs().max()))
    return worst


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> MultiAdapterModel:
    backbone = build_random("test_vit", seed=1).eval()
    bank = AdapterBank(backbone.cfg, capacity=2)
    for i, method in enumerate(AUDIO_METHODS):
        _add(bank, method, method, dict(CASES[method].mixed[0]), seed=10 + i)
    model = MultiAdapterModel(backbone, bank).eval()
    cache = tmp_path_factory.mktemp("graphs")
    model.runner = OrtFeatures(backbone, bank, cache_dir=cache, background=False)
    return model


def _runner(model: MultiAdapterModel) -> OrtFeatures:
    assert isinstance(model.runner, OrtFeatures)
    return model.runner


def test_every_method_in_one_mixed_batch_matches_eager(served: MultiAdapterModel) -> None:
    ids: list[str | None] = [*AUDIO_METHODS, None, *reversed(AUDIO_METHODS)]
    spec = torch.randn(len(ids), FRAMES, 128)
    assert _pair(served, spec, ids) <= TOL
    runner = _runner(served)
    assert runner.runs >= 2  # the prompt group and the rest each ran on a graph
    assert not runner.failures


def test_hot_swap_rollback_eviction_and_reload_never_re_export(served: MultiAdapterModel) -> None:
    runner = _runner(served)
    bank = served.bank
    ids = ["lora", "loaa", "bottleneck", "lora"]
    spec = torch.randn(len(ids), FRAMES, 128)
    assert _pair(served, spec, ids) <= TOL
    builds, runs = runner.cache.builds, runner.runs
    before = {
        a: {k: t.clone() for k, t in bank.adapter_tensors(a).items()} for a in ("lora", "loaa")
    }
    # a swap: new weights for an adapter of the same stack signature
    randomise(bank, "lora", seed=999)
    assert _pair(served, spec, ids) <= TOL
    # eviction and a reload (the old weights again: a rollback)
    bank.remove("loaa")
    assert _pair(served, spec[:1], ["lora"]) <= TOL
    cfg = dict(CASES["loaa"].mixed[0])
    bank.add("loaa", "loaa", cfg, HeadConfig(num_classes=3 + 14 % 3), before["loaa"])
    assert _pair(served, spec, ids) <= TOL
    # a second adapter in a stack grows its slots past the exported example: same graph
    bank.grow("lora", dict(CASES["lora"].mixed[0]), 4)
    _add(bank, "lora-b", "lora", dict(CASES["lora"].mixed[0]), seed=77)
    _add(bank, "lora-c", "lora", dict(CASES["lora"].mixed[0]), seed=78)
    assert _pair(served, spec, ["lora-c", "lora", "lora-b", None]) <= TOL
    assert runner.cache.builds == builds, "a swap, eviction, reload or growth re-exported"
    assert runner.runs > runs


def test_a_new_stack_signature_runs_eager_until_its_graph_is_built(
    tmp_path: Path, tiny_backbone: VisionTransformer
) -> None:
    model = _one_adapter(tiny_backbone, "bottleneck", {"rank": 3}, seed=1)
    bank = model.bank
    runner = OrtFeatures(tiny_backbone, bank, cache_dir=tmp_path, background=True)
    model.runner = runner
    spec = torch.randn(2, FRAMES, 128)
    try:
        assert _pair(model, spec, ["a", "a"]) <= TOL  # no graph yet: eager, and a build starts
        assert runner.fallbacks == 1
        assert runner.wait_idle(timeout=120)
        assert _pair(model, spec, ["a", None]) <= TOL
        assert runner.runs == 1
        assert runner.cache.builds == 1
        _add(bank, "b", "bottleneck", {"rank": 2}, seed=2)  # a new signature
        assert _pair(model, spec, ["b", "a"]) <= TOL  # eager while the new graph builds
        assert runner.wait_idle(timeout=120)
        assert _pair(model, spec, ["b", "a"]) <= TOL
        assert runner.cache.builds == 2
    finally:
        runner.close()


def test_graph_cache_is_reused_after_a_restart_and_rebuilt_when_corrupt(
    tmp_path: Path, tiny_backbone: VisionTransformer
) -> None:
    model = _one_adapter(tiny_backbone, "convpass", {"rank": 2}, seed=3)
    bank = model.bank
    spec = torch.randn(2, FRAMES, 128)

    def restart() -> OrtFeatures:
        model.runner = OrtFeatures(tiny_backbone, bank, cache_dir=tmp_path, background=False)
        assert _pair(model, spec, ["a", None]) <= TOL
        return _runner(model)

    first = restart()
    assert (first.cache.builds, first.cache.reused) == (1, 0)
    second = restart()
    assert (second.cache.builds, second.cache.reused) == (0, 1)
    (graph,) = tmp_path.glob("*.onnx")
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    third = restart()
    assert (third.cache.builds, third.cache.reused) == (1, 0), "a corrupt graph was trusted"


def test_int8_backbone_agrees_with_fp32(tmp_path: Path, tiny_backbone: VisionTransformer) -> None:
    model = _one_adapter(tiny_backbone, "loaa", dict(CASES["loaa"].mixed[0]), seed=5)
    bank = model.bank
    spec = torch.randn(16, FRAMES, 128)
    ids = ["a"] * 16
    with torch.inference_mode():
        want = torch.stack([t for t in model(spec, ids) if t is not None])
        model.runner = OrtFeatures(
            tiny_backbone, bank, cache_dir=tmp_path, precision="int8", background=False
        )
        got = torch.stack([t for t in model(spec, ids) if t is not None])
    assert _runner(model).runs == 1
    cos = torch.nn.functional.cosine_similarity(want, got, dim=-1)
    assert float(cos.min()) > 0.98, cos
    assert not torch.equal(want, got)  # the weights really are quantised


def test_audio_visual_rows_match_eager(tmp_path: Path) -> None:
    backbone = build_random("test_vit_av", seed=3).eval()
    bank = AdapterBank.for_backbone(backbone, capacity=2)
    configs = {"a": {"reduction": 8, "segments": 3}, "b": {"reduction": 4, "segments": 3}}
    for i, (adapter_id, cfg) in enumerate(configs.items()):
        bank.add(adapter_id, "avpea", cfg, HeadConfig(num_classes=3 + i))
        randomise(bank, adapter_id, seed=40 + i)
    model = MultiAdapterModel(backbone, bank).eval()
    gen = torch.Generator().manual_seed(0)
    spec = torch.randn(3, 3, 98, 64, generator=gen)
    pixels = torch.randn(3, 3, 3, 48, 48, generator=gen)
    ids: list[str | None] = ["a", "b", "a"]
    with torch.inference_mode():
        want = model.forward_av(spec, pixels, ids)
        model.runner = OrtFeatures(backbone, bank, cache_dir=tmp_path, background=False)
        got = model.forward_av(spec, pixels, ids)
    assert _runner(model).runs == 1
    for w, g in zip(want, got, strict=True):
        assert w is not None
        assert g is not None
        assert w.shape == g.shape
        assert float((w - g).abs().max()) <= TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_io_binding_matches_eager(tmp_path: Path, precision: str) -> None:
    """On the GPU: inputs, slot tensors and outputs bound in device memory, on torch's stream."""
    device = torch.device("cuda")
    backbone = build_random("test_vit", seed=1).to(device).eval()
    bank = AdapterBank.for_backbone(backbone, capacity=2)
    for i, method in enumerate(("lora", "loaa", "bottleneck")):
        _add(bank, method, method, dict(CASES[method].mixed[0]), seed=20 + i)
    model = MultiAdapterModel(backbone, bank).eval()
    ids: list[str | None] = ["lora", "loaa", None, "bottleneck"]
    spec = torch.randn(len(ids), FRAMES, 128, device=device)
    with torch.inference_mode():
        want = model(spec, ids)
        model.runner = OrtFeatures(
            backbone,
            bank,
            cache_dir=tmp_path,
            precision=precision,
            background=False,  # type: ignore[arg-type]
        )
        got = model(spec, ids)
    assert _runner(model).runs == 1
    tol = TOL if precision == "fp32" else 5e-2
    for w, g in zip(want, got, strict=True):
        if w is not None and g is not None:
            assert g.device.type == "cuda"
            assert float((w - g).abs().max()) <= tol


def test_least_recently_used_graph_is_closed_and_reopened_from_disk(
    tmp_path: Path, tiny_backbone: VisionTransformer
) -> None:
    model = _one_adapter(tiny_backbone, "bottleneck", {"rank": 2}, seed=4)
    bank = model.bank
    runner = OrtFeatures(tiny_backbone, bank, cache_dir=tmp_path, background=False, max_graphs=1)
    model.runner = runner
    short, long = torch.randn(2, FRAMES, 128), torch.randn(2, 2 * FRAMES, 128)
    assert _pair(model, short, ["a", None]) <= TOL
    assert _pair(model, long, ["a", "a"]) <= TOL  # a second family: the first is closed
    assert runner.stats()["graphs_built"] == 2
    assert _pair(model, short, ["a", "a"]) <= TOL
    stats = runner.stats()
    assert (stats["graphs_built"], stats["graphs_reused"], stats["graph_runs"]) == (2, 1, 3)


@pytest.mark.parametrize("background", [False, True])
def test_a_graph_that_fails_to_build_leaves_its_batches_on_pytorch(
    tmp_path: Path,
    tiny_backbone: VisionTransformer,
    monkeypatch: pytest.MonkeyPatch,
    background: bool,
) -> None:
    calls: list[int] = []

    def broken(*args: object, **kw: object) -> None:
        calls.append(1)
        raise RuntimeError("the exporter broke")

    monkeypatch.setattr(runner_module, "export_graph", broken)
    monkeypatch.setattr(runner_module, "export_in_child", broken)
    model = _one_adapter(tiny_backbone, "bottleneck", {"rank": 2}, seed=6)
    bank = model.bank
    runner = OrtFeatures(tiny_backbone, bank, cache_dir=tmp_path, background=background)
    model.runner = runner
    spec = torch.randn(2, FRAMES, 128)
    try:
        for _ in range(3):
            assert _pair(model, spec, ["a", None]) <= TOL  # answered, in eager PyTorch
            assert runner.wait_idle(timeout=60)
        stats = runner.stats()
        assert (stats["failures"], stats["graph_runs"], stats["eager_batches"]) == (1, 0, 3)
        assert len(calls) == 1, "a failed graph was tried again on every batch"
    finally:
        runner.close()


def test_graph_cache_keeps_the_most_recently_used_graphs(tmp_path: Path) -> None:
    cache = GraphCache(tmp_path, max_graphs=2)
    spec = GraphSpec("clip", 64, 128, None, 0, 0, ())

    def build(path: Path) -> None:
        path.write_bytes(b"graph")

    for i, key in enumerate(["a", "b", "c"]):
        cache.get_or_build(key, spec, build)
        os.utime(tmp_path / f"{key}.json", (1000.0 + i, 1000.0 + i))  # a, b, c: oldest first
    assert sorted(p.stem for p in tmp_path.glob("*.onnx")) == ["b", "c"]
    cache.get_or_build("b", spec, build)  # reused: now the most recent
    cache.get_or_build("d", spec, build)
    assert sorted(p.stem for p in tmp_path.glob("*.onnx")) == ["b", "d"]
    assert (cache.builds, cache.reused) == (4, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "b.onnx", "d.json", "d.onnx"]
