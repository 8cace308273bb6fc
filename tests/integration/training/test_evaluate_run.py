"""`lookaside-train evaluate RUN` without --data-dir scores the run's own split.csv (the exact
clips training scored, even after the data folder changed), equal to the accuracy and loss
training wrote; options that draw a split draw it again from the recorded data; an empty split
names the splits that have clips; a --dataset other than the recorded one needs --data-dir;
--predictions writes the scores of the printed pass (same precision), its suffix checked first;
a recorded fp16 is kept on CUDA only."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from training import evaluation
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
    assert f"evaluating on the run's own split {folder_run / 'split.csv'}" in out
    assert f"{synth_folder} may hold other clips now" in out
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
    assert "the split drawn again (--test-fraction given)" in out
    assert "on test (32 clips)" in out


def test_a_clip_added_after_training_leaves_the_run_s_split_unchanged(
    synth_folder: Path, backbone_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_folder, data)
    run = _train(data, tmp_path / "runs", backbone_file, "--test-fraction", "0.25", "--seed", "3")
    for i, wav in enumerate(sorted(data.rglob("*.wav"))[:8]):  # new clips shift a fresh draw
        shutil.copy(wav, wav.with_name(f"added{i}.wav"))
    code, out, err = _evaluate([str(run)], capsys)
    assert code == 0, err
    assert "on test (16 clips)" in out
    assert _scores(out) == _recorded(run, "test")


def test_another_dataset_needs_data_dir(
    folder_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _evaluate([str(folder_run), "--dataset", "esc50"], capsys)
    assert code == 2
    assert "--dataset esc50 is not the dataset" in err
    assert "(the recorded folder); pass --data-dir with it" in err


def test_predictions_are_the_printed_pass_and_a_bad_suffix_is_refused_first(
    folder_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "p.txt"
    code, out, err = _evaluate([str(folder_run), "--predictions", str(bad)], capsys)
    assert code == 2
    assert "name a .csv or .jsonl file" in err
    assert "top-1" not in out
    assert not bad.exists()
    code, _, err = _evaluate([str(folder_run), "--predictions", "-"], capsys)
    assert code == 2
    assert "evaluate prints its table on stdout" in err
    scored = tmp_path / "p.jsonl"
    argv = [str(folder_run), "--predictions", str(scored), "--precision", "bf16"]
    code, out, err = _evaluate(argv, capsys)
    assert code == 0, err
    accuracy, loss = _scores(out)
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert len(rows) == 16
    truth = [Path(r["path"]).parent.name for r in rows]
    top1 = [r["top_k"][0]["label"] for r in rows]
    assert sum(a == b for a, b in zip(top1, truth, strict=True)) / len(rows) == accuracy
    # the loss of the bf16 pass, from the written scores (an fp32 re-scoring differs)
    nll = [
        -math.log(next(e["score"] for e in r["top_k"] if e["label"] == t))
        for r, t in zip(rows, truth, strict=True)
    ]
    assert sum(nll) / len(nll) == pytest.approx(loss, rel=1e-5)


def test_a_recorded_fp16_is_kept_on_cuda_only(
    synth_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = {"dataset": "folder", "data_dir": str(synth_folder), "precision": "fp16"}
    (tmp_path / "metrics.json").write_text(json.dumps({"args": args, "eval_split": "val"}))
    got, note, split = evaluation.evaluation_args(tmp_path, [{"device": "cpu"}], {})
    assert (got.precision, split) == ("fp32", "val")
    assert note is not None
    assert "fp16, which needs CUDA: scoring in fp32" in note
    monkeypatch.setattr(evaluation, "resolve_device", lambda name: torch.device("cuda", 0))
    got, note, _ = evaluation.evaluation_args(tmp_path, [{"device": "cuda"}], {})
    assert got.precision == "fp16"
    assert note is not None
    assert "fp32" not in note


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
    assert f"split 'test' of csv at {run / 'split.csv'}" in err
    counts = re.search(r"the splits with clips: train \((\d+)\), val \((\d+)\)\.", err)
    assert counts, err
    assert int(counts.group(1)) + int(counts.group(2)) == 64
    assert "--test-fraction 0.2" in err
    assert f"lookaside-train evaluate {run} --split val" in err


def test_a_csv_run_is_scored_on_split_csv_or_drawn_again_from_its_csv(
    synth_folder: Path, backbone_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "clips.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for path in sorted(synth_folder.rglob("*.wav")):
            writer.writerow([str(path), path.parent.name])
    run = _train(table, tmp_path / "runs", backbone_file, "--test-fraction", "0.25", dataset="csv")
    code, out, err = _evaluate([str(run), "--seed", "0"], capsys)
    assert code == 0, err
    assert f"dataset csv at {table} (recorded in" in out
    assert _scores(out) == _recorded(run, "test")
    table.unlink()
    code, out, err = _evaluate([str(run), "--split", "val"], capsys)
    assert code == 0, err
    split_csv = run / "split.csv"
    assert f"the run's own split {split_csv}" in out
    assert _scores(out) == _recorded(run, "val")
    code, _, err = _evaluate([str(run), "--seed", "0"], capsys)
    assert code == 2
    assert f"--seed draw the split again from the data, but {run}'s {table} is gone" in err
    split_csv.unlink()
    code, _, err = _evaluate([str(run)], capsys)
    assert code == 2
    assert f"recorded data directory {table} no longer exists and {run} has no split.csv" in err
