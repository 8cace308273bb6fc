"""`lookaside-train evaluate RUN` without --data-dir scores the dataset and split the run
recorded in metrics.json (a folder run and a CSV run), equal to the accuracy and loss training
wrote; an empty split names the splits that have clips; a recorded data file that is gone falls
back to split.csv."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from training.cli import main


def _train(data: Path, out: Path, backbone: Path, *extra: str, dataset: str = "folder") -> Path:
    argv = ["train", "--dataset", dataset, "--data-dir", str(data), "--out", str(out)]
    argv += ["--backbone", f"file:{backbone}", "--device", "cpu", "--frames", "128"]
    argv += ["--epochs", "1", "--method", "linear", "--lr", "5e-3", "--no-progress", *extra]
    assert main(argv) == 0
    runs = sorted((out / dataset).iterdir(), key=lambda p: p.name)
    return runs[-1]


def _evaluate(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["evaluate", *argv, "--device", "cpu", "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def _scores(stdout: str) -> tuple[float, float]:
    """(accuracy, loss) as evaluate prints them: the loss differs for any other set of clips."""
    found = re.search(r"\(accuracy ([0-9.e-]+), loss ([0-9.e-]+)\)", stdout)
    assert found, stdout
    return float(found.group(1)), float(found.group(2))


def _recorded(run: Path, split: str) -> tuple[float, float]:
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    return metrics[f"{split}_accuracy"], pytest.approx(metrics[f"{split}_loss"], rel=1e-6)


@pytest.fixture(scope="module")
def folder_run(
    synth_folder: Path, backbone_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("eval-folder")
    return _train(synth_folder, out, backbone_file, "--test-fraction", "0.25", "--seed", "3")


def test_a_folder_run_is_scored_on_its_recorded_dataset_and_split(
    folder_run: Path, synth_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _evaluate([str(folder_run)], capsys)
    assert code == 0, err
    assert f"evaluating on dataset folder at {synth_folder} (recorded in" in out
    assert _scores(out) == _recorded(folder_run, "test")
    assert "on test (16 clips)" in out  # a quarter of 64 clips, drawn with the recorded seed
    code, out, err = _evaluate([str(folder_run.parent), "--split", "val"], capsys)
    assert code == 0, err
    assert f"using {folder_run} (the highest" in out
    assert _scores(out) == _recorded(folder_run, "val")


def test_options_on_the_command_line_override_the_record(
    folder_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _evaluate([str(folder_run), "--test-fraction", "0.5"], capsys)
    assert code == 0, err
    assert "on test (32 clips)" in out


def test_an_empty_split_names_the_splits_with_clips(
    synth_folder: Path, backbone_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _train(synth_folder, tmp_path, backbone_file)
    # Without --split, the run's own scored split: val, as it has no test split.
    code, out, err = _evaluate([str(run)], capsys)
    assert code == 0, err
    assert "on val (" in out
    assert _scores(out) == _recorded(run, "val")
    code, _, err = _evaluate([str(run), "--split", "test"], capsys)
    assert code == 2
    assert "split 'test' of folder" in err
    counts = re.search(r"the splits with clips: train \((\d+)\), val \((\d+)\)\.", err)
    assert counts, err
    assert int(counts.group(1)) + int(counts.group(2)) == 64
    assert "--test-fraction 0.2" in err
    assert f"lookaside-train evaluate {run} --split val" in err


def test_a_csv_run_is_scored_and_falls_back_to_split_csv_when_its_csv_is_gone(
    synth_folder: Path, backbone_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "clips.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for path in sorted(synth_folder.rglob("*.wav")):
            writer.writerow([str(path), path.parent.name])
    run = _train(table, tmp_path / "runs", backbone_file, "--test-fraction", "0.25", dataset="csv")
    code, out, err = _evaluate([str(run)], capsys)
    assert code == 0, err
    assert f"dataset csv at {table}" in out
    assert _scores(out) == _recorded(run, "test")
    table.unlink()
    code, out, err = _evaluate([str(run), "--split", "val"], capsys)
    assert code == 0, err
    split_csv = run / "split.csv"
    assert f"the recorded {table} no longer exists; using the run's split {split_csv}" in out
    assert _scores(out) == _recorded(run, "val")
    split_csv.unlink()
    code, _, err = _evaluate([str(run)], capsys)
    assert code == 2
    assert f"recorded data directory {table} no longer exists and {run} has no split.csv" in err
