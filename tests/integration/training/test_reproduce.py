"""``lookaside-train reproduce``: the commands it would run, and a real (tiny) run of a table's
rows on a fake ESC-50 tree with our number written beside the paper's."""

from __future__ import annotations

import csv
import json
import shlex
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookaside.checkpoint import load_checkpoint
from tests.integration.training.synth_data import write_clip
from training.cli import main
from training.cli_parser import parser
from training.paper_tables import TABLES
from training.recipes import RECIPES

SMOKE = ["--backbone", "random:test_vit", "--epochs", "1", "--device", "cpu", "--frames", "64"]


def fake_esc50(root: Path, per_fold: int = 2) -> None:
    """Three classes, ``per_fold`` clips of each per fold, the public layout."""
    rng = np.random.default_rng(3)
    rows = []
    for target, (category, kind) in enumerate(
        (("dog", "tone"), ("rain", "noise"), ("tick", "clicks"))
    ):
        for fold in range(1, 6):
            for take in range(per_fold):
                name = f"{fold}-{100 + target}-{'AB'[take]}-{target}.wav"
                write_clip(root / "audio" / name, kind, 1.0, rng)
                rows.append([name, fold, target, category, "False", 100 + target, "AB"[take]])
    (root / "meta").mkdir(parents=True)
    with (root / "meta" / "esc50.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)


@pytest.mark.parametrize("table", sorted(TABLES))
def test_dry_run_prints_a_parseable_command_per_trainable_row(
    table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reproduce", table, "--dry-run", "--data-root", str(tmp_path), *SMOKE]) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = [line for line in lines if line.startswith("lookaside-train ")]
    trainable = {(r.key, d) for r in TABLES[table].rows if r.method for d in r.metrics}
    assert len(commands) == len(trainable)
    skipped = [r for r in TABLES[table].rows if r.skip]
    assert sum("skipped:" in line for line in lines) == sum(len(r.metrics) for r in skipped)
    for command in commands:
        argv = shlex.split(command)[1:]
        ns = parser().parse_args(argv)
        assert ns.command == (
            "crossval" if "--data-dir" in argv and "ESC-50" in command else "train"
        )
        assert ns.recipe in RECIPES
        assert ns.epochs == 1
        assert ns.backbone == "random:test_vit"
        assert Path(argv[argv.index("--data-dir") + 1]).parent == tmp_path


def test_unknown_rows_and_data_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reproduce", "aat-table1", "--dry-run", "--rows", "nope"]) == 2
    assert "aat-table1 has no rows ['nope']" in capsys.readouterr().err
    assert main(["reproduce", "aat-table1", "--dry-run", "--data", "esc51=x"]) == 2
    assert "DATASET one of esc50" in capsys.readouterr().err


def test_reproduce_trains_rows_and_reports_ours_beside_the_paper(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_esc50(tmp_path / "esc")
    out = tmp_path / "out"
    argv = ["reproduce", "aat-table1", "--rows", "mlp,full", "--folds", "1,2"]
    argv += ["--data", f"esc50={tmp_path / 'esc'}", "--data-root", str(tmp_path / "none")]
    rc = main([*argv, "--out", str(out), *SMOKE, "--batch-size", "4"])
    assert rc == 0
    report = json.loads((out / "aat-table1.json").read_text())
    rows = {(r["key"], r["dataset"]): r for r in report["rows"]}
    esc = rows[("mlp", "esc50")]
    assert esc["status"] == "ok"
    assert esc["recipe"] == "esc50-aat-mlp"
    assert esc["paper"] == 96.1
    assert esc["params_paper"] == "3.567 / 3.91%"
    assert esc["params_ours"] == "3.567M"  # counted on the paper's AST shape, not test_vit
    # ours is the mean of the folds' test accuracies the checkpoints record
    scores = [
        100 * load_checkpoint(Path(run)).manifest.metrics["test_accuracy"] for run in esc["runs"]
    ]
    assert len(scores) == 2
    assert esc["folds"] == pytest.approx(scores)
    assert esc["ours"] == pytest.approx(statistics.mean(scores))
    assert esc["delta"] == pytest.approx(esc["ours"] - 96.1)
    spc = rows[("mlp", "speech_commands")]
    assert spc["status"] == f"missing data: {tmp_path / 'none' / 'speech_commands_v0.02'}"
    assert spc["ours"] is None
    assert spc["paper"] == 97.5
    assert rows[("full", "esc50")]["status"].startswith("skipped: full fine-tuning")
    md = (out / "aat-table1.md").read_text()
    assert f"{esc['ours']:.2f} / 96.10" in md
    assert "missing data:" in md
    printed = capsys.readouterr().out
    assert f"{esc['ours']:.2f} / 96.10" in printed

    # A rerun (after a crash, say) trains only what is left: the finished row is reused.
    before = sorted((out / "runs").rglob("manifest.json"))
    assert main([*argv, "--out", str(out), *SMOKE, "--batch-size", "4"]) == 0
    assert sorted((out / "runs").rglob("manifest.json")) == before
    assert json.loads((out / "aat-table1.json").read_text())["rows"] == report["rows"]
    assert "mlp (ESC-50): finished earlier" in capsys.readouterr().out
    # other options are another experiment: trained again
    assert main([*argv, "--out", str(out), *SMOKE, "--batch-size", "3"]) == 0
    assert len(sorted((out / "runs").rglob("manifest.json"))) == 2 * len(before)


def test_a_failing_row_fails_the_command_but_not_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "esc").mkdir()  # present, but no meta/esc50.csv: the loader refuses it
    argv = ["reproduce", "soft-moa-table1", "--rows", "lora", "--data", f"esc50={tmp_path / 'esc'}"]
    argv += ["--data-root", str(tmp_path / "none"), "--out", str(tmp_path / "out"), *SMOKE]
    assert main(argv) == 1
    report = json.loads((tmp_path / "out" / "soft-moa-table1.json").read_text())
    status = {r["dataset"]: r["status"] for r in report["rows"]}
    assert status["esc50"].startswith("failed: ")
    assert "esc50.csv" in status["esc50"]
    assert status["speech_commands"].startswith("missing data: ")


def test_each_row_is_counted_once_and_trained_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The planned row (sizes, command) is the one trained: count_row runs once per row.
    import training.param_table as param_table
    import training.reproduce as reproduce

    counted: list[str] = []
    trained: list[str] = []
    real_count = param_table.count_row

    def count(table: Any, row: Any) -> Any:
        counted.append(row.key)
        return real_count(table, row)

    def run(recipe: str, dataset: str, data: Path, ns: Any, res: reproduce.Result) -> None:
        trained.append(recipe)
        res.ours, res.status = 50.0, "ok"

    monkeypatch.setattr(param_table, "count_row", count)
    monkeypatch.setattr(reproduce, "_run", run)
    (tmp_path / "esc").mkdir()
    argv = ["reproduce", "soft-moa-table1", "--rows", "lora,dpt", "--datasets", "esc50"]
    argv += ["--data", f"esc50={tmp_path / 'esc'}", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert sorted(counted) == ["dpt", "lora"]
    assert sorted(trained) == ["esc50-smoa-lora", "esc50-smoa-prompt"]
    rows = json.loads((tmp_path / "out" / "soft-moa-table1.json").read_text())["rows"]
    assert [(r["status"], r["params_ours"] is not None) for r in rows] == [("ok", True)] * 2


def test_the_map_is_the_final_splits(tmp_path: Path) -> None:
    from training.reports import TrainReport
    from training.reproduce import final_map

    def report(split: str, metrics: dict[str, float]) -> TrainReport:
        run = tmp_path / split
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({"eval_split": split}))
        return TrainReport(run, metrics, 1, 10, 0.1, 1.0, 1.0)

    # Whatever order the metrics are in, the one named by metrics.json's eval_split.
    assert final_map(report("test", {"test_map": 0.9, "val_map": 0.3})) == 0.9
    assert final_map(report("val", {"val_map": 0.3, "accuracy": 0.5})) == 0.3
    assert final_map(TrainReport(tmp_path / "val", {"val_accuracy": 0.5}, 1, 1, 1, 1, 1)) is None
