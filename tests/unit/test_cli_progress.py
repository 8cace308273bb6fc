"""Training output in a log (stderr not a terminal): one line per epoch on stderr, no tqdm bars,
so no carriage-return frames pile up in the file (issue 18, point 6); ``--no-progress`` turns off
bars only, the per-epoch lines stay (issue 19, point 4)."""

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
    for extra, out_dir in (([], "runs"), (["--no-progress", "--no-tensorboard"], "quiet")):
        with log.open("w") as err:
            proc = subprocess.run(
                [str(BIN / "lookaside-train"), "train", "--data-dir", str(tmp_path / "data")]
                + ["--backbone", "random:test_vit", "--epochs", "2", "--batch-size", "4"]
                + ["--method", "linear", "--lr", "1e-2", "--frames", "128", "--device", "cpu"]
                + ["--out", str(tmp_path / out_dir), *extra],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={k: v for k, v in os.environ.items() if not k.startswith("LOOKASIDE_")},
                timeout=300,
                check=False,
            )
        text = log.read_text()
        assert proc.returncode == 0, text[-3000:]
        assert "\r" not in text
        assert "it/s" not in text
        assert "batch/s" not in text
        lines = [line for line in text.splitlines() if line.startswith("epoch ")]
        assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"], extra
        assert all("train loss" in line and "val acc" in line for line in lines)
        assert "epoch 1/2" not in proc.stdout  # stdout: the summary table only
        assert "best epoch" in proc.stdout
        events = list((tmp_path / out_dir / "folder" / "1" / "tensorboard").glob("events.out.*"))
        assert len(events) == (0 if "--no-tensorboard" in extra else 1)
