"""The README's main command runs end to end, offline, in a fresh process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_demo_trains_saves_reloads_and_classifies_a_mixed_batch() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LOOKASIDE_BACKBONE": "random:test_vit"}
    proc = subprocess.run(
        [sys.executable, "-m", "examples.offline_demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "One mixed batch, one backbone pass" in out
    assert "sound-type@1" in out
    assert "pitch@1" in out
    match = re.search(r"(\d+)/(\d+) correct", out)
    assert match is not None, out
    correct, total = int(match.group(1)), int(match.group(2))
    assert total == 12
    assert correct >= 10, out  # easy synthetic tasks: near-perfect, not chance (6/12)
