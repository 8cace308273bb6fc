"""The README's main command (``make demo`` = ``python -m examples.demo``) end to end, offline:
it trains two adapters with the real CLI, starts the real server, pushes them, and classifies
generated clips over HTTP; a second run reuses the trained store."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _demo(work: Path) -> str:
    env = {
        k: v for k, v in os.environ.items() if k not in ("LOOKASIDE_BACKBONE", "LOOKASIDE_DEVICE")
    }
    env.update({"HF_HUB_OFFLINE": "1", "LOOKASIDE_ADMIN_TOKEN": "demo-test-token"})
    proc = subprocess.run(
        [sys.executable, "-m", "examples.demo", "--work", str(work), "--exit-after-requests"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _answers(out: str) -> dict[str, list[str]]:
    """``clip label -> [top label of each adapter line]`` from the demo's printout."""
    answers: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        clip = re.match(r"\s+a new '([\w-]+)' clip", line)
        if clip:
            current = clip.group(1)
            answers[current] = []
            continue
        served = re.match(r"\s+(\w+)@(\d+): ([\w-]+) ", line)
        if served and current is not None:
            answers[current].append(served.group(3))
    return answers


def test_demo_trains_serves_and_answers_then_restarts_fast(tmp_path: Path) -> None:
    first = _demo(tmp_path)
    assert "random frozen weights" in first
    assert "-m training train" in first
    assert "-m training push" in first
    for adapter in ("tones@1", "noises@1"):
        assert adapter in first, first
    answers = _answers(first)
    # Two new clips per adapter; the easy synthetic classes are learnt: most are right.
    assert len(answers) == 4, first
    right = sum(top == [clip] for clip, top in answers.items())
    assert right >= 3, answers
    assert "through both adapters in one request" in first
    assert re.search(r"serving at http://127\.0\.0\.1:\d+", first)

    second = _demo(tmp_path)  # the store is reused: no training this time
    assert "-m training train" not in second
    assert "tones@1" in second
    assert "noises@1" in second
