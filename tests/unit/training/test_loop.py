"""fit / evaluate on the tiny backbone: what is trained, what must not move, the best copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lookaside.adapters import HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.model import MultiAdapterModel
from training.export import make_bank
from training.loop import (
    AdapterForward,
    LoopConfig,
    evaluate,
    fit,
    get_lr,
    load_adapter_tensors,
    mean_average_precision,
)


def _toy(n: int = 24, frames: int = 32) -> TensorDataset:
    """Two classes a tiny backbone can tell apart: energy in low vs high mel bins."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, frames, 128, generator=gen) * 0.1
    y = torch.arange(n) % 2
    x[y == 0, :, :64] += 1.0
    x[y == 1, :, 64:] += 1.0
    return TensorDataset(x, y)


def _setup(backbone: VisionTransformer, method: str = "loaa", **config: object):  # type: ignore[no-untyped-def]
    bank = make_bank(backbone, trainable=True)
    bank.add("a", method, config, HeadConfig(num_classes=2), seed=0)
    return bank, AdapterForward(MultiAdapterModel(backbone, bank), "a")


@pytest.mark.parametrize("method", ["loaa", "lora", "prompt"])
def test_fit_trains_only_the_adapter_and_keeps_a_copy_of_the_best(
    tiny_backbone: VisionTransformer, method: str
) -> None:
    frozen = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    bank, module = _setup(tiny_backbone, method)
    params = bank.trainable_parameters("a")
    before = bank.adapter_tensors("a")
    data = _toy()
    loader = DataLoader(
        data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    cfg = LoopConfig(epochs=3, lr=3e-3, progress=False, mixup_alpha=0.2)
    state = fit(
        module,
        params,
        loader,
        DataLoader(data, batch_size=8),
        cfg,
        num_classes=2,
        device=torch.device("cpu"),
        snapshot=lambda: bank.adapter_tensors("a"),
    )
    for key, value in tiny_backbone.state_dict().items():
        assert torch.equal(value, frozen[key]), key  # bit-identical backbone
    after = bank.adapter_tensors("a")
    assert any(not torch.equal(before[k], after[k]) for k in after)
    # The optimizer saw exactly the adapter's tensors: nothing else has a grad or requires one.
    assert {id(p) for p in params} == {id(p) for p in bank.parameters() if p.requires_grad}
    assert all(not p.requires_grad for p in tiny_backbone.parameters())
    # The best epoch is a copy: training on changes the live weights, not the stored best.
    best = {k: v.clone() for k, v in state.best_tensors.items()}
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    assert all(torch.equal(best[k], state.best_tensors[k]) for k in best)
    load_adapter_tensors(bank, "a", state.best_tensors)
    assert all(torch.equal(bank.adapter_tensors("a")[k], best[k]) for k in best)


def test_fit_is_deterministic_with_a_seed(tiny_backbone: VisionTransformer) -> None:
    results = []
    for _ in range(2):
        bank, module = _setup(tiny_backbone)
        data = _toy()
        loader = DataLoader(
            data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
        )
        fit(
            module,
            bank.trainable_parameters("a"),
            loader,
            DataLoader(data, batch_size=8),
            LoopConfig(epochs=1, lr=1e-3, progress=False, mixup_alpha=0.5, seed=3),
            num_classes=2,
            device=torch.device("cpu"),
            snapshot=lambda b=bank: b.adapter_tensors("a"),
        )
        results.append(bank.adapter_tensors("a"))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = LoopConfig(epochs=1, lr=1.0, min_lr_ratio=0.1)
    lrs = [get_lr(s, total=100, warmup=10, cfg=cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_evaluate_matches_a_plain_reference(tiny_backbone: VisionTransformer) -> None:
    bank, module = _setup(tiny_backbone)
    data = _toy(10)
    res = evaluate(
        module, DataLoader(data, batch_size=3), device=torch.device("cpu"), num_classes=2
    )
    with torch.no_grad():
        logits = module(data.tensors[0])
    pred = logits.argmax(-1)
    assert res.accuracy == float((pred == data.tensors[1]).float().mean())
    assert res.loss == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, data.tensors[1])), rel=1e-5
    )
    assert res.confusion.sum() == 10
    assert int(np.trace(res.confusion)) == int((pred == data.tensors[1]).sum())


def test_mean_average_precision() -> None:
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 0])
    # class 0 ranking: rows 0 (+), 1 (-), 3 (+), 2 (-) -> AP = (1/1 + 2/3) / 2
    # class 1 ranking: rows 2 (+), 3 (-), 1 (+), 0 (-) -> AP = (1/1 + 2/3) / 2
    assert mean_average_precision(scores, labels) == pytest.approx((1 + 2 / 3) / 2)


def test_evaluate_keeps_the_scores_it_counted_when_asked(tiny_backbone: VisionTransformer) -> None:
    _, module = _setup(tiny_backbone)
    data = _toy(10)
    loader = DataLoader(data, batch_size=3)
    plain = evaluate(module, loader, device=torch.device("cpu"), num_classes=2)
    kept = evaluate(module, loader, device=torch.device("cpu"), num_classes=2, keep_scores=True)
    assert plain.scores is None
    assert plain.labels is None
    assert (kept.loss, kept.accuracy, kept.mean_ap) == (plain.loss, plain.accuracy, plain.mean_ap)
    assert np.array_equal(kept.confusion, plain.confusion)
    assert kept.scores is not None
    assert kept.labels is not None
    with torch.no_grad():
        reference = module(data.tensors[0]).softmax(-1).numpy()
    np.testing.assert_allclose(kept.scores, reference, rtol=1e-5, atol=1e-6)
    assert np.array_equal(kept.labels, data.tensors[1].numpy())
    assert kept.accuracy == float((kept.scores.argmax(1) == kept.labels).mean())
