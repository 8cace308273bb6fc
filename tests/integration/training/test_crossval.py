"""``crossval`` end to end on a speaker-grouped CSV: a real K-fold (different test sets and
checkpoints, no speaker in two test folds), and a refusal before training where the split is
fixed."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lookaside.checkpoint.manifest import load_manifest
from tests.integration.training.synth_data import FAST_TRAIN, write_clip
from training.args import TrainArgs
from training.cli import main
from training.datasets import DataOptions, Splits, load_dataset
from training.reports import TrainReport

FAST = ["--backbone", "random:test_vit", "--device", "cpu", *FAST_TRAIN, "--no-tensorboard"]
SPEAKERS = [f"spk{i}" for i in range(6)]
KINDS = ("tone", "chirp", "clicks")


def grouped_csv(root: Path) -> Path:
    """6 speakers x 3 labels x 1 short clip, with a speaker column."""
    rng = np.random.default_rng(7)
    rows = []
    for speaker in SPEAKERS:
        for kind in KINDS:
            rel = f"{speaker}/{kind}.wav"
            write_clip(root / rel, kind, 0.7, rng)
            rows.append([rel, kind, speaker])
    index = root / "clips.csv"
    with index.open("w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "speaker"], *rows])
    return index


def test_crossval_draws_a_grouped_kfold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = grouped_csv(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["crossval", "--dataset", "csv", "--data-dir", str(index), "--out", str(out)]
    assert main([*argv, "--num-folds", "3", "--name", "kw", *FAST]) == 0
    summary = json.loads((out / "kw-crossval.json").read_text())
    assert summary["folds"] == [1, 2, 3]
    scheme = summary["split_scheme"]
    assert (scheme["scheme"], scheme["k"], scheme["group_key"]) == (
        "drawn K-fold",
        3,
        "column speaker",
    )
    runs = summary["runs"]
    digests = [load_manifest(Path(r["run_dir"])).weights_sha256 for r in runs]
    assert digests == [r["weights_sha256"] for r in runs]
    assert len(set(digests)) == 3  # three different checkpoints
    tests: list[set[str]] = []
    speakers: list[set[str]] = []
    for fold, run in zip((1, 2, 3), runs, strict=True):
        assert Path(run["run_dir"]) == out / f"kw-fold{fold}" / "1"
        with (Path(run["run_dir"]) / "split.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        test = {r["path"] for r in rows if r["split"] == "test"}
        assert test
        assert {r["group"] for r in rows if r["split"] == "test"}.isdisjoint(
            r["group"] for r in rows if r["split"] != "test"
        )
        tests.append(test)
        speakers.append({Path(p).parent.name for p in test})
    everything = {
        str((tmp_path / "data" / s / f"{k}.wav").resolve()) for s in SPEAKERS for k in KINDS
    }
    assert set().union(*tests) == everything
    assert sum(len(t) for t in tests) == 18
    assert sum(len(s) for s in speakers) == 6  # each speaker in exactly one test fold
    accs = [r["accuracy"] for r in runs]
    assert summary["mean_accuracy"] == pytest.approx(sum(accs) / 3)
    assert f"mean top-1 over 3 folds: {100 * sum(accs) / 3:.2f} %" in capsys.readouterr().out


def test_crossval_refuses_a_fixed_split_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "sc"
    rng = np.random.default_rng(8)
    for word, kind in (("yes", "tone"), ("no", "clicks")):
        for i in range(3):
            write_clip(root / word / f"{i:08x}_nohash_0.wav", kind, 0.5, rng)
    (root / "validation_list.txt").write_text("yes/00000000_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("no/00000001_nohash_0.wav\n")
    out = tmp_path / "out"
    argv = ["crossval", "--dataset", "speech_commands", "--data-dir", str(root), "--out", str(out)]
    assert main([*argv, *FAST]) == 2
    assert "cannot cross-validate speech_commands" in capsys.readouterr().err
    assert not out.exists()
    assert main(["train", "--dataset", "speech_commands", "--data-dir", str(root), "--fold", "2",
                 "--out", str(out), *FAST]) == 2  # fmt: skip
    assert "--fold 2 cannot apply" in capsys.readouterr().err
    assert not out.exists()


def test_crossval_checks_folds_and_test_sets_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    index = grouped_csv(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["crossval", "--dataset", "csv", "--data-dir", str(index), "--out", str(out), *FAST]
    assert main([*argv, "--num-folds", "3", "--folds", "1,4"]) == 2
    assert "out of the dataset's folds [1, 2, 3]" in capsys.readouterr().err
    assert main([*argv, "--num-folds", "7"]) == 2  # 6 speakers cannot fill 7 folds
    assert "6 groups cannot fill 7 disjoint splits" in capsys.readouterr().err
    train = ["train", *argv[1:], "--num-folds", "3"]  # without --fold it would do nothing
    assert main(train) == 2
    assert "--num-folds 3 needs --fold k" in capsys.readouterr().err
    import training.crossval as crossval

    def ignoring_fold(name: str, opts: DataOptions) -> Splits:
        return load_dataset(name, replace(opts, fold=1))

    # A loader that ignored --fold (what issue 19 found) is caught before anything trains.
    monkeypatch.setattr(crossval, "load_dataset", ignoring_fold)
    assert main([*argv, "--num-folds", "3"]) == 2
    assert "folds 1 and 2 of csv have the same test clips" in capsys.readouterr().err
    assert not out.exists()


def test_a_fold_column_counting_from_zero_trains_and_crossvalidates(tmp_path: Path) -> None:
    """Own folds are any integers: --fold 0 trains, crossval runs folds 0, 1 and 2."""
    rng = np.random.default_rng(9)
    rows = []
    for i in range(9):
        kind = KINDS[i % 3]
        rel = f"c{i}.wav"
        write_clip(tmp_path / "data" / rel, kind, 0.5, rng)
        rows.append([rel, kind, i // 3])
    index = tmp_path / "data" / "folds.csv"
    with index.open("w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "fold"], *rows])
    out = tmp_path / "out"
    common = ["--dataset", "csv", "--data-dir", str(index), "--out", str(out), *FAST]
    assert main(["train", *common, "--fold", "0", "--val-fraction", "0.2", "--name", "z"]) == 0
    assert main(["crossval", *common, "--val-fraction", "0.2", "--name", "cv"]) == 0
    summary = json.loads((out / "cv-crossval.json").read_text())
    assert [r["fold"] for r in summary["runs"]] == [0, 1, 2]
    assert summary["split_scheme"]["folds"] == [0, 1, 2]


def test_the_summary_is_written_after_every_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failure at fold 2 keeps fold 1 recorded, marked incomplete."""
    import training.pipeline as pipeline

    index = grouped_csv(tmp_path / "data")
    out = tmp_path / "out"
    real_train = pipeline.train

    def failing_at_fold_2(args: TrainArgs) -> TrainReport:
        if args.fold == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_train(args)

    monkeypatch.setattr(pipeline, "train", failing_at_fold_2)
    argv = ["crossval", "--dataset", "csv", "--data-dir", str(index), "--out", str(out), *FAST]
    with pytest.raises(RuntimeError, match="simulated"):
        main([*argv, "--num-folds", "3", "--name", "kw"])
    summary = json.loads((out / "kw-crossval.json").read_text())
    assert (summary["folds"], summary["folds_done"], summary["complete"]) == ([1, 2, 3], [1], False)
    assert [r["fold"] for r in summary["runs"]] == [1]
    assert summary["mean_accuracy"] == summary["runs"][0]["accuracy"]
    assert Path(summary["runs"][0]["run_dir"]) == out / "kw-fold1" / "1"


def test_only_rank_0_reports_under_torchrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    index = grouped_csv(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["crossval", "--dataset", "csv", "--data-dir", str(index), "--out", str(out), *FAST]
    monkeypatch.setenv("RANK", "1")  # WORLD_SIZE unset: each run trains alone, as rank 0 would
    assert main([*argv, "--num-folds", "2", "--name", "kw"]) == 0
    assert (out / "kw-fold2" / "1").is_dir()  # the folds ran
    assert not (out / "kw-crossval.json").exists()
    assert "mean top-1" not in capsys.readouterr().out
    monkeypatch.setenv("RANK", "0")
    assert main([*argv, "--num-folds", "2", "--name", "kw0"]) == 0
    summary = json.loads((out / "kw0-crossval.json").read_text())
    assert (summary["folds_done"], summary["complete"]) == ([1, 2], True)
    assert "mean top-1 over 2 folds" in capsys.readouterr().out
