"""Linear probe on cached pooled tokens, and resume giving the uninterrupted run's weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import training.pipeline as pipeline
from lookaside.checkpoint import load_manifest
from training.cli import main

BASE = ["--dataset", "folder", "--frames", "64", "--batch-size", "8", "--no-progress"]


def test_linear_probe_trains_on_cached_tokens(
    synth_folder: Path, backbone_file: Path, tmp_path: Path
) -> None:
    argv = [
        "train",
        *BASE,
        "--data-dir",
        str(synth_folder),
        "--backbone",
        f"file:{backbone_file}",
        "--out",
        str(tmp_path),
        "--method",
        "linear",
        "--epochs",
        "5",
        "--lr",
        "1e-2",
    ]
    assert main(argv) == 0
    tokens = sorted((tmp_path / ".cache" / "tokens").iterdir())
    assert len(tokens) == 2  # train and val pooled tokens
    stamps = [p.stat().st_mtime_ns for p in tokens]
    assert main(argv) == 0  # second run: tokens read back, not recomputed
    assert sorted((tmp_path / ".cache" / "tokens").iterdir()) == tokens
    assert [p.stat().st_mtime_ns for p in tokens] == stamps
    first, second = (load_manifest(tmp_path / "folder" / v) for v in ("1", "2"))
    assert first.method == "linear"
    assert first.weights_sha256 == second.weights_sha256
    assert first.metrics == second.metrics


class _Stop(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(
    synth_folder: Path, backbone_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = [
        "train",
        *BASE,
        "--data-dir",
        str(synth_folder),
        "--backbone",
        f"file:{backbone_file}",
        "--method",
        "loaa",
        "--rank",
        "4",
        "--epochs",
        "3",
        "--mixup",
        "0.3",
        "--specaug",
        "--freq-mask",
        "8",
        "--time-mask",
        "8",
    ]
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0

    real_save = pipeline.save_state

    def save_then_stop(directory: Path, state: pipeline.FitState, *args: object) -> None:
        real_save(directory, state, *args)  # type: ignore[arg-type]
        if state.epoch == 1:
            raise _Stop

    monkeypatch.setattr(pipeline, "save_state", save_then_stop)
    with pytest.raises(_Stop):
        main([*common, "--out", str(tmp_path / "cut")])
    monkeypatch.setattr(pipeline, "save_state", real_save)
    state_dir = tmp_path / "cut" / "folder" / ".state-v1"
    assert json.loads((state_dir / "state.json").read_text())["epoch"] == 1
    assert main([*common, "--out", str(tmp_path / "cut"), "--resume", str(state_dir)]) == 0
    whole = load_manifest(tmp_path / "whole" / "folder" / "1")
    resumed = load_manifest(tmp_path / "cut" / "folder" / "1")
    assert resumed.weights_sha256 == whole.weights_sha256
    assert resumed.metrics == whole.metrics
