"""Experiment tracking in the loop: the collapse warning on a uniform predictor, early stopping on
a scripted validation sequence (and across a resume), the per-epoch line, and --window-hop's
checks."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import training.loop as loop
import training.pipeline as pipeline
from lookaside.checkpoint.limits import CheckpointLimits, min_window_hop
from lookaside.errors import ConfigError
from lookaside.features import FeatureConfig
from training.args import TrainArgs, build_args
from training.benchmark import common_args
from training.loop import EpochLog, EvalResult, FitState, LoopConfig, fit
from training.state import load_state, save_state
from training.tasks.base import feature_config
from training.tracking import COLLAPSE_EPOCHS, COLLAPSE_TOLERANCE, Tracker, collapse_warning

CPU = torch.device("cpu")


class Uniform(nn.Module):
    """Constant logits whatever the input: a predictor collapsed to the uniform distribution
    (its one parameter gets a zero gradient, so it stays collapsed)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], self.classes) + 0 * self.bias


def _data(n: int = 16, classes: int = 4) -> DataLoader[Any]:
    gen = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 8, generator=gen), torch.arange(n) % classes), batch_size=4
    )


def _args(**kw: Any) -> TrainArgs:
    return TrainArgs(dataset="folder", method="linear", **kw)


def test_a_uniform_predictor_raises_the_collapse_warning_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    module = Uniform(4)
    tracker = Tracker(_args(epochs=5, lr=5e-3), ["a", "b", "c", "d"], log_dir=None,
                      done_epochs=0, bars=False)  # fmt: skip
    state = fit(
        module,
        list(module.parameters()),
        _data(),
        _data(),
        LoopConfig(epochs=5, lr=5e-3, progress=False),
        num_classes=4,
        device=CPU,
        snapshot=lambda: {"bias": module.bias.detach().clone()},
        on_epoch_end=tracker.on_epoch,
    )
    assert all(h.val_loss == pytest.approx(math.log(4)) for h in state.history)
    assert len(state.warnings) == 1  # once, not again at epochs 4 and 5
    warning = state.warnings[0]
    assert "ln(4) = 1.3863" in warning
    assert "epochs 1-3" in warning
    assert "--lr (now 0.005" in warning
    assert "labels" in warning
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("warning:")] == [
        "warning: " + warning.split(":", 1)[1].strip()
    ]
    # The line after epoch 3 (the third at ln 4), not before it.
    assert err.index("warning: " + warning.split(":", 1)[1].strip()) == 3
    assert [line.split(":")[0] for line in err if line.startswith("epoch")] == [
        f"epoch {k}/5" for k in range(1, 6)
    ]


def _logs(losses: list[float]) -> list[EpochLog]:
    return [EpochLog(i + 1, 1.0, v, 0.0, 1e-3, 1.0, 1.0) for i, v in enumerate(losses)]


def test_collapse_needs_every_one_of_the_last_epochs_at_chance() -> None:
    chance = math.log(10)
    near, off = chance * (1 + COLLAPSE_TOLERANCE / 2), chance * (1 - 2 * COLLAPSE_TOLERANCE)
    assert collapse_warning(_logs([near] * COLLAPSE_EPOCHS), 10, 1e-3) is not None
    assert collapse_warning(_logs([near] * (COLLAPSE_EPOCHS - 1)), 10, 1e-3) is None
    assert collapse_warning(_logs([near] * (COLLAPSE_EPOCHS - 1) + [off]), 10, 1e-3) is None
    assert collapse_warning(_logs([off] + [near] * COLLAPSE_EPOCHS), 10, 1e-3) is not None
    assert collapse_warning(_logs([0.0] * COLLAPSE_EPOCHS), 1, 1e-3) is None  # one class


def test_collapse_advice_follows_the_training_loss() -> None:
    chance = math.log(10)
    stuck = [EpochLog(i + 1, chance, chance, 0.1, 1e-3, 1.0, 1.0) for i in range(COLLAPSE_EPOCHS)]
    not_learning = collapse_warning(stuck, 10, 1e-3)
    assert not_learning is not None
    assert "sits there too (2.3026): try a lower --lr (now 0.001, e.g. 0.0001" in not_learning
    fits = [EpochLog(i + 1, 0.2, chance, 0.1, 1e-3, 1.0, 1.0) for i in range(COLLAPSE_EPOCHS)]
    overfit = collapse_warning(fits, 10, 1e-3)
    assert overfit is not None
    assert "fell to 0.2000, so it fits the training clips only" in overfit
    assert "--lr" not in overfit


def _scripted(monkeypatch: pytest.MonkeyPatch, accuracies: list[float]) -> list[int]:
    """Replace the loop's validation by ``accuracies`` in turn; returns the calls made."""
    calls: list[int] = []

    def fake(*_: object, **__: object) -> EvalResult:
        calls.append(1)
        acc = accuracies[len(calls) - 1]
        return EvalResult(1 - acc, acc, 0.0, np.zeros((2, 2), dtype=np.int64), 4)

    monkeypatch.setattr(loop, "evaluate", fake)
    return calls


def _fit(epochs: int, patience: int, state: FitState | None = None) -> FitState:
    module = nn.Linear(8, 2)
    return fit(
        module,
        list(module.parameters()),
        _data(classes=2),
        _data(classes=2),
        LoopConfig(epochs=epochs, lr=1e-3, progress=False, early_stop=patience),
        num_classes=2,
        device=CPU,
        snapshot=lambda: {k: v.detach().clone() for k, v in module.state_dict().items()},
        state=state,
    )


def test_early_stop_after_patience_epochs_without_a_better_accuracy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = _scripted(monkeypatch, [0.5, 0.7, 0.6, 0.7, 0.9, 0.95])
    state = _fit(epochs=6, patience=2)
    assert len(calls) == 4  # epoch 4 ties 0.7: not better, second epoch without -> stop
    assert state.stopped_at == 4
    assert state.epoch == 4
    assert (state.best_epoch, state.best_accuracy) == (2, 0.7)
    assert [h.val_accuracy for h in state.history] == [0.5, 0.7, 0.6, 0.7]
    # Resume files know: the resumed run stays stopped and trains no further epoch.
    current = {k: v.clone() for k, v in state.best_tensors.items()}
    save_state(tmp_path / "s", state, current, {"version": 1})
    resumed, _, _ = load_state(tmp_path / "s")
    assert resumed.stopped_at == 4
    assert _fit(epochs=6, patience=2, state=resumed).epoch == 4
    assert len(calls) == 4


def test_no_early_stop_when_off_or_at_the_last_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _scripted(monkeypatch, [0.5, 0.4, 0.3, 0.2])
    state = _fit(epochs=4, patience=0)
    assert (len(calls), state.stopped_at) == (4, None)
    calls = _scripted(monkeypatch, [0.5, 0.4, 0.3])
    state = _fit(epochs=3, patience=2)  # epoch 3 would stop anyway: the run simply ended
    assert (len(calls), state.stopped_at) == (3, None)


def test_window_hop_is_recorded_and_checked_before_training() -> None:
    splits = SimpleNamespace(features=FeatureConfig(target_frames=128))
    feats = feature_config(_args(window_hop=48), splits)  # type: ignore[arg-type]
    assert (feats.window_hop_frames, feats.hop_frames) == (48, 48)
    assert feature_config(_args(), splits).window_hop_frames is None  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"--window-hop 129 / --frames 128: .*exceeds"):
        feature_config(_args(window_hop=129), splits)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"--window-hop 100 / --frames 64: .*exceeds"):
        feature_config(_args(window_hop=100, frames=64), splits)  # type: ignore[arg-type]
    limits = CheckpointLimits()
    least = min_window_hop(128, limits)
    assert least == -(-128 // limits.max_window_overlap) == 8  # the default overlap of 16
    assert feature_config(_args(window_hop=least), splits).hop_frames == least  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=rf"--window-hop {least - 1} is under {least} frames"):
        feature_config(_args(window_hop=least - 1), splits)  # type: ignore[arg-type]


def test_feature_options_are_validated_as_the_checkpoint_is() -> None:
    # Every option goes through FeatureConfig's own checks, named by the option that set it.
    splits = SimpleNamespace(features=FeatureConfig(target_frames=128))
    with pytest.raises(ConfigError, match=r"--std 0.0: Input should be greater than 0"):
        feature_config(_args(std=0.0), splits)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"--mean inf: "):
        feature_config(_args(mean=float("inf")), splits)  # type: ignore[arg-type]
    assert feature_config(_args(mean=-1.5, std=2.0), splits).std == 2.0  # type: ignore[arg-type]


@pytest.mark.parametrize(("splits", "final"), [(("val", "test"), "test"), (("val",), "val")])
def test_only_the_final_splits_scores_are_kept(
    monkeypatch: pytest.MonkeyPatch, splits: tuple[str, ...], final: str
) -> None:
    kept: dict[str, bool] = {}

    def scored(
        _k: object, _c: object, _b: object, batches: list[str], _s: object, **kw: Any
    ) -> EvalResult:
        kept[batches[0]] = kw["keep_scores"]
        return EvalResult(0.5, 0.25, 0.0, np.zeros((2, 2), dtype=np.int64), 4)

    def eval_batches(_a: object, _s: object, split: str, *_: object) -> list[str] | None:
        return [split] if split in splits else None

    monkeypatch.setattr(pipeline, "evaluate_checkpoint", scored)
    kind = SimpleNamespace(eval_batches=eval_batches, split_metrics=lambda *_: {})
    setup = SimpleNamespace(
        args=_args(), splits=SimpleNamespace(name="x"), features=None, device=CPU, progress=False,
        rank=0,
    )  # fmt: skip
    metrics, results, chosen = pipeline._score(setup, kind, None, None)  # type: ignore[arg-type]
    assert (chosen, metrics["accuracy"], sorted(results)) == (final, 0.25, sorted(splits))
    assert kept == {s: s == final for s in splits}  # val's scores only when val is final


def test_the_training_benchmark_times_training_without_tensorboard(tmp_path: Path) -> None:
    ns = argparse.Namespace(clips=16, batch_size=8, device="cpu", precision="fp32", workers=0)
    args = build_args([common_args(ns, tmp_path, tmp_path / "out"), {"method": "linear"}])
    assert args.tensorboard is False  # no event file written, no per-clip scores kept
    assert _args().tensorboard is True  # the default it overrides
