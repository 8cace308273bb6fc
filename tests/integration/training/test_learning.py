"""Real learning on a synthesised dataset: LoAA on the tiny backbone reaches >= 90 % validation
accuracy, and the checkpoint reproduces the reported numbers exactly in lookaside and `evaluate`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from lookaside.backbones import load_backbone
from lookaside.bank import AdapterBank
from lookaside.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, load_checkpoint
from lookaside.decode import decode_audio
from lookaside.features import extract
from lookaside.model import MultiAdapterModel
from training.cli import main

TRAIN = [
    "--dataset",
    "folder",
    "--frames",
    "128",
    "--batch-size",
    "8",
    "--val-fraction",
    "0.25",
    "--no-progress",
]


@pytest.fixture(scope="module")
def trained(
    synth_folder: Path, backbone_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("runs")
    rc = main(
        [
            "train",
            *TRAIN,
            "--data-dir",
            str(synth_folder),
            "--backbone",
            f"file:{backbone_file}",
            "--out",
            str(out),
            "--method",
            "loaa",
            "--rank",
            "8",
            "--kernels",
            "attn:T,ffn:F",
            "--epochs",
            "12",
            "--lr",
            "3e-3",
            "--name",
            "synth",
        ]
    )
    assert rc == 0
    return out / "synth" / "1", backbone_file


def test_loaa_learns_and_writes_the_store_layout(trained: tuple[Path, Path]) -> None:
    run_dir, _ = trained
    for name in (
        MANIFEST_FILE,
        WEIGHTS_FILE,
        "metrics.json",
        "training_curve.png",
        "confusion_matrix.png",
        "split.csv",
    ):
        assert (run_dir / name).is_file(), name
    manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
    assert manifest["method"] == "loaa"
    assert manifest["version"] == 1
    assert manifest["features"]["target_frames"] == 128
    assert manifest["metrics"]["val_accuracy"] >= 0.9
    report = json.loads((run_dir / "metrics.json").read_text())
    assert len(report["history"]) == 12
    assert report["history"][-1]["train_loss"] < report["history"][0]["train_loss"]


def test_checkpoint_reproduces_the_metric_in_lookaside(trained: tuple[Path, Path]) -> None:
    """Independent path: decode + extract each val clip, one adapter in a serving bank."""
    run_dir, backbone_file = trained
    backbone = load_backbone(f"file:{backbone_file}")
    ckpt = load_checkpoint(run_dir, backbone=backbone)
    bank = AdapterBank.for_backbone(backbone)
    ckpt.load_into(bank, "a")
    model = MultiAdapterModel(backbone, bank)
    with (run_dir / "split.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "val"]
    labels = ckpt.manifest.labels
    correct = 0
    with torch.inference_mode():
        for row in rows:
            wave, rate = decode_audio(Path(row["path"]).read_bytes())
            spec = extract(wave, rate, ckpt.manifest.features).unsqueeze(0)
            correct += int(model.logits(spec, "a").argmax(-1)) == labels.index(row["label"])
    assert correct / len(rows) == ckpt.manifest.metrics["val_accuracy"]


def test_evaluate_prints_the_same_numbers(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, backbone_file = trained
    metrics = load_checkpoint(run_dir).manifest.metrics
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                str(run_dir),
                "--split",
                "val",
                "--backbone",
                f"file:{backbone_file}",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"accuracy {metrics['val_accuracy']!r}, loss {metrics['val_loss']!r}" in out
