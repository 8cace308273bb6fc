"""Training output in a log (stderr not a terminal): one line per epoch, no tqdm bars, so no
carriage-return frames pile up in the file (issue 18, point 6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from training.loop import bars

BIN = Path(sys.executable).parent


def test_bars_only_on_a_terminal() -> None:
    assert bars(False) is False
    assert bars(True) is sys.stderr.isatty()


def test_training_into_a_log_writes_epoch_lines_and_no_bars(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for k, label in enumerate(("low", "high")):
        (tmp_path / "data" / label).mkdir(parents=True)
        t = np.arange(8000) / 16_000
        for n in range(6):
            wave = 0.5 * np.sin(2 * np.pi * (200 + 2000 * k) * t) + 0.01 * rng.standard_normal(8000)
            sf.write(tmp_path / "data" / label / f"{n}.wav", wave.astype(np.float32), 16_000)
    log = tmp_path / "train.log"
    with log.open("w") as out:
        proc = subprocess.run(
            [str(BIN / "lookaside-train"), "train", "--data-dir", str(tmp_path / "data")]
            + ["--backbone", "random:test_vit", "--epochs", "2", "--batch-size", "4"]
            + ["--frames", "128", "--device", "cpu", "--out", str(tmp_path / "runs")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("LOOKASIDE_")},
            timeout=300,
            check=False,
        )
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text
    assert "it/s" not in text
    assert "batch/s" not in text
    assert "epoch 1: train loss" in text
    assert "epoch 2: train loss" in text
