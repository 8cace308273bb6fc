"""Tracking of real (tiny) runs: per-epoch lines on stderr as the run goes (with --no-progress),
TensorBoard events read back with TensorBoard's own reader, early stopping, the window hop in the
manifest, and a resumed run's log without duplicate steps."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

import training.pipeline as pipeline
from lookaside.checkpoint import load_manifest
from training.cli import main

SCALARS = {
    "loss/train": "train_loss",
    "loss/val": "val_loss",
    "accuracy/val": "val_accuracy",
    "lr": "lr",
    "clips_per_s": "clips_per_s",
}
"""TensorBoard tag -> metrics.json history field."""


def _argv(data: Path, backbone: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        *("--dataset", "folder", "--data-dir", str(data), "--backbone", f"file:{backbone}"),
        *("--out", str(out), "--frames", "64", "--batch-size", "8", "--no-progress"),
        *("--method", "linear", "--lr", "1e-2", *extra),
    ]


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0, "images": 0}
    )
    acc.Reload()
    return acc


def _check_scalars(acc: EventAccumulator, history: list[dict[str, Any]]) -> None:
    for tag, key in SCALARS.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [h["epoch"] for h in history], tag  # once each
        assert [e.value for e in events] == pytest.approx([h[key] for h in history], rel=1e-6)


def test_a_run_prints_live_lines_logs_tensorboard_and_stops_early(
    synth_folder: Path,
    backbone_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen_at_save: list[str] = []  # stderr so far, each time an epoch's resume files are saved
    real_save = pipeline.save_state

    def save(*args: Any) -> None:
        seen_at_save.append(capsys.readouterr().err)
        real_save(*args)

    monkeypatch.setattr(pipeline, "save_state", save)
    argv = _argv(synth_folder, backbone_file, tmp_path, "--epochs", "8", "--early-stop", "2")
    assert main([*argv, "--window-hop", "32"]) == 0
    captured = capsys.readouterr()
    err = "".join(seen_at_save) + captured.err
    run_dir = tmp_path / "folder" / "1"
    body = json.loads((run_dir / "metrics.json").read_text())
    history, stopped = body["history"], body["stopped_at_epoch"]

    # Early stop: ran until `--early-stop` epochs passed without a better val accuracy.
    accuracies = [h["val_accuracy"] for h in history]
    best = int(np.argmax(accuracies)) + 1  # the first best: ties keep the earlier epoch
    assert (body["early_stop"], body["best_epoch"]) == (2, best)
    assert stopped == len(history) == best + 2 < 8
    assert body["metrics"]["val_accuracy"] == accuracies[best - 1]  # the best epoch exported
    assert f"early stop at epoch {stopped}" in err
    assert re.search(rf"stopped early +after epoch {stopped} \(--early-stop\)", captured.out)

    # Live lines: epoch k's line was on stderr before its resume files were written.
    assert len(seen_at_save) == stopped
    for k, text in enumerate(seen_at_save, start=1):
        assert f"epoch {k}/8: train loss {history[k - 1]['train_loss']:.4f}" in text
        assert f"epoch {k + 1}/8" not in text
    # A learning run: validation loss falls away from ln(4), no collapse warning.
    assert history[-1]["val_loss"] < 0.9 * np.log(4)
    assert body["warnings"] == []
    assert "warning:" not in err

    assert load_manifest(run_dir).features.window_hop_frames == 32

    acc = _events(run_dir)
    _check_scalars(acc, history)
    labels = [row["label"] for row in body["per_class"]]
    support = {row["label"]: row["support"] for row in body["per_class"]}
    assert sorted(acc.Tags()["tensors"]) == sorted(f"pr_curve/{label}" for label in labels)
    for label in labels:
        (curve,) = acc.Tensors(f"pr_curve/{label}")
        data = tensor_util.make_ndarray(curve.tensor_proto)  # rows: TP, FP, TN, FN, P, R
        assert curve.step == stopped
        assert data[0, 0] == support[label]  # at threshold 0 every positive is a true positive
        assert data[0, 0] + data[1, 0] == sum(support.values())
    (image,) = acc.Images("confusion_matrix")
    assert Image.open(io.BytesIO(image.encoded_image_string)).size == (image.width, image.height)
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(1e-2)
    assert start.hparams["method"].string_value == "linear"
    assert start.hparams["early_stop"].number_value == 2
    (final,) = acc.Scalars("final/accuracy")
    assert final.value == pytest.approx(body["metrics"]["accuracy"])


class _Stop(Exception):
    pass


def test_a_resumed_run_appends_to_its_log_without_duplicate_steps(
    synth_folder: Path, backbone_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = _argv(synth_folder, backbone_file, tmp_path, "--epochs", "3")
    real_save = pipeline.save_state

    def stop_before_epoch_2_is_saved(directory: Path, state: Any, *args: Any) -> None:
        if state.epoch == 2:  # epoch 2 is in the log, the resume files still say epoch 1
            raise _Stop
        real_save(directory, state, *args)

    monkeypatch.setattr(pipeline, "save_state", stop_before_epoch_2_is_saved)
    with pytest.raises(_Stop):
        main(argv)
    monkeypatch.setattr(pipeline, "save_state", real_save)
    run_dir = tmp_path / "folder" / "1"
    assert [p.name for p in run_dir.iterdir()] == ["tensorboard"]
    assert [e.step for e in _events(run_dir).Scalars("loss/val")] == [1, 2]  # closed on error

    assert main([*argv, "--resume", str(tmp_path / "folder" / ".state-v1")]) == 0
    body = json.loads((run_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in body["history"]] == [1, 2, 3]
    _check_scalars(_events(run_dir), body["history"])
    # A run directory holding a checkpoint is still refused (before any training).
    assert main([*argv, "--version", "1"]) == 2


def test_a_window_hop_over_the_window_is_refused_before_training(
    synth_folder: Path, backbone_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _argv(synth_folder, backbone_file, tmp_path, "--epochs", "1", "--window-hop", "65")
    assert main(argv) == 2
    assert "--window-hop 65 / --frames 64: window_hop_frames (65)" in capsys.readouterr().err
    assert not (tmp_path / "folder").exists()
