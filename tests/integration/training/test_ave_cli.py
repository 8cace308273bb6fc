"""``lookaside-train train/evaluate --dataset ave`` end to end through the CLI on a tiny synthetic
AVE layout (PyAV-made videos whose colour and tone switch at the annotated seconds)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from lookaside.checkpoint import load_manifest
from tests.av_synth import Clip, Second, encode
from training.cli import main

EVENTS = {"Bark": ((220, 40, 40), 440.0), "Flute": ((40, 70, 220), 2600.0)}
BACKGROUND = Second((90, 90, 90), None)
COUNTS = {"train": 10, "val": 2, "test": 4}


def make_ave(root: Path, seed: int = 0) -> None:
    """Official AVE layout: Annotations.txt (with header), split files, AVE/<id>.mp4."""
    rng = random.Random(seed)
    (root / "AVE").mkdir(parents=True)
    every = ["Category&VideoID&Quality&StartTime&EndTime"]
    for split, count in COUNTS.items():
        lines = []
        for i in range(count):
            category = list(EVENTS)[i % len(EVENTS)]
            start = rng.randint(0, 5)
            end = rng.randint(start + 3, 10)
            colour, tone = EVENTS[category]
            seconds = [Second(colour, tone) if start <= t < end else BACKGROUND for t in range(10)]
            clip = Clip(seconds, fps=2, size=(48, 48), container="mp4", audio_codec="aac")
            (root / "AVE" / f"{split}{i:02d}.mp4").write_bytes(encode(clip))
            lines.append(f"{category}&{split}{i:02d}&good&{start}&{end}")
        name = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}[split]
        (root / name).write_text("\n".join(lines) + "\n")
        every += lines
    (root / "Annotations.txt").write_text("\n".join(every) + "\n")


@pytest.fixture(scope="module")
def ave_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ave") / "AVE_Dataset"
    make_ave(root)
    return root


@pytest.fixture(scope="module")
def trained(ave_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    rc = main(
        [
            "train",
            "--dataset",
            "ave",
            "--data-dir",
            str(ave_root),
            "--method",
            "avpea",
            "--temporal-heads",
            "2",
            "--backbone",
            "random:test_vit_av",
            "--out",
            str(out),
            "--epochs",
            "10",
            "--lr",
            "3e-3",
            "--batch-size",
            "5",
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


def test_train_writes_an_av_checkpoint_scored_per_second(trained: Path, ave_root: Path) -> None:
    run_dir = trained / "ave" / "1"
    manifest = load_manifest(run_dir)
    assert manifest.method == "avpea"
    assert manifest.labels == ["Bark", "Flute", "background"]
    assert manifest.features.target_frames == 100  # one second of fbank per segment
    assert (run_dir / "adapter.safetensors").is_file()
    assert (run_dir / "confusion_matrix.png").is_file()
    body = json.loads((run_dir / "metrics.json").read_text())
    assert body["eval_split"] == "test"
    confusion_total = sum(r["support"] for r in body["per_class"])
    assert confusion_total == COUNTS["test"] * 10  # every second of every test video counts
    # The adapter learnt the events: well above the majority class on unseen videos.
    assert manifest.metrics["test_accuracy"] >= 0.8, manifest.metrics
    # One cache entry per distinct video (decoded once, reused for the final evaluation).
    entries = list((trained / ".cache" / "ave").rglob("*.safetensors"))
    videos = {p.read_bytes() for p in (ave_root / "AVE").glob("*.mp4")}
    assert len(entries) == len(videos)


def test_evaluate_prints_the_number_in_the_manifest(
    trained: Path, ave_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = trained / "ave" / "1"
    capsys.readouterr()
    rc = main(
        [
            "evaluate",
            str(run_dir),
            "--dataset",
            "ave",
            "--data-dir",
            str(ave_root),
            "--split",
            "test",
            "--out",
            str(trained),
            "--no-progress",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    found = re.search(r"\((\d+) seconds\): top-1 [\d.]+ % \(accuracy ([\d.e-]+)", text)
    assert found, text
    assert int(found.group(1)) == COUNTS["test"] * 10  # seconds
    assert float(found.group(2)) == load_manifest(run_dir).metrics["test_accuracy"]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--method", "loaa"], r"dataset 'ave' is audio-visual; choose .*avpea"),
        (["--method", "avpea", "--mixup", "0.5"], r"--mixup .* audio datasets only"),
        (
            ["--method", "avpea", "--backbone", "random:test_vit"],
            r"--dataset ave needs an RGB backbone",
        ),
    ],
)
def test_mismatched_choices_are_refused_with_the_fix(
    ave_root: Path,
    tmp_path: Path,
    argv: list[str],
    match: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc = main(
        [
            "train",
            "--dataset",
            "ave",
            "--data-dir",
            str(ave_root),
            "--backbone",
            "random:test_vit_av",
            *argv,
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 2
    assert re.search(match, capsys.readouterr().err)


def test_an_av_method_on_an_audio_dataset_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["train", "--method", "avpea", "--dataset", "esc50", "--data-dir", str(tmp_path)])
    assert rc == 2
    assert re.search(r"'avpea' is audio-visual .* --dataset ave", capsys.readouterr().err)
