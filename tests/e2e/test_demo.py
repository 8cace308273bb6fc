"""The README's main command (``make demo`` = ``python -m examples.demo``) end to end, offline:
it trains two adapters with the real CLI, starts the real server, pushes them, and classifies
generated clips over HTTP; a second run says it reuses the trained store; Ctrl-C (a SIGINT to the
whole process group, as a terminal sends it) stops it with one line and status 130."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

from examples.demo import EXAMPLES, TASKS
from lookaside.client.stream import build_parser
from training.cli import parser
from training.cli_common import train_args_of

ROOT = Path(__file__).parents[2]


def _env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("LOOKASIDE_BACKBONE", "LOOKASIDE_DEVICE")
    }
    env.update({"HF_HUB_OFFLINE": "1", "LOOKASIDE_ADMIN_TOKEN": "demo-test-token"})
    return env


def _demo(work: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "examples.demo", "--work", str(work), "--exit-after-requests"],
        cwd=ROOT,
        env=_env(),
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


def _check_printed_commands(out: str) -> None:
    """Each ``$ ...`` line pastes into a shell: shlex gives back argv the CLI accepts."""
    commands = [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("$ ")]
    trains = [argv for argv in commands if argv[1:4] == ["-m", "training", "train"]]
    assert len(trains) == len(TASKS), out
    for argv in trains:
        ns = parser().parse_args(argv[3:])
        assert ns.task == f"demo: synthetic {ns.name}"  # one argument, spaces and all
        args = train_args_of(ns)
        assert args.backbone == "random:test_vit"
    assert any(argv[1:4] == ["-m", "training", "push"] for argv in commands)
    live = [line.split("from a terminal, ", 1)[1] for line in out.splitlines() if "Live:" in line]
    assert len(live) == 1, out
    argv = shlex.split(live[0])
    assert argv[0] == "lookaside-stream"
    ns = build_parser().parse_args(argv[1:])
    assert Path(ns.file).is_file(), ns
    assert ns.adapter == [",".join(TASKS)], ns


def _ctrl_c(work: Path) -> tuple[int, str]:
    """The demo serving until a terminal's Ctrl-C: SIGINT to its process group."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.demo", "--work", str(work), "--port", "0"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        lines.append(line)
        if "Press Ctrl-C to stop." in line or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    return proc.returncode, "".join(lines) + rest


def test_demo_trains_serves_and_answers_then_restarts_fast(tmp_path: Path) -> None:
    first = _demo(tmp_path)
    assert "random frozen weights" in first
    assert "Demo backbone random:test_vit (passed explicitly)" in first
    _check_printed_commands(first)
    examples = sorted((tmp_path / "examples").iterdir())
    assert [p.name for p in examples] == sorted(f"{label}.wav" for _, label in EXAMPLES)
    for path in examples:
        info = sf.info(path)
        assert (info.samplerate, info.channels) == (16_000, 1)
        assert 0.5 <= info.duration <= 10
    assert f"offers {len(EXAMPLES)} example clips from {tmp_path / 'examples'}" in first
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
    assert "Reusing the adapters trained by an earlier run" in second
    assert "no training this time" in second
    assert "tones@1" in second
    assert "noises@1" in second

    rc, out = _ctrl_c(tmp_path)
    assert "Traceback" not in out, out[-3000:]
    assert "KeyboardInterrupt" not in out, out[-3000:]
    assert rc == 130, out[-3000:]
    assert out.count("Stopped the demo server (Ctrl-C).") == 1, out[-3000:]
