"""Ctrl-C ends ``lookaside-serve`` with one line, status 130 and no traceback (issue 18, point 1),
also when a second SIGINT follows: a second Ctrl-C, or ``make demo`` where the terminal's SIGINT
reaches the server and the demo forwards its own. Before, uvicorn re-raised the signals inside
the event loop and asyncio printed ``CancelledError`` ... ``KeyboardInterrupt`` tracebacks.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.live_server import Output

BIN = Path(sys.executable).parent
SHUTDOWN_LINE = "interrupted (SIGINT): shut down cleanly"


class Serve:
    """The installed ``lookaside-serve`` in its own process group, output collected."""

    def __init__(self, store: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKASIDE_")}
        env["LOOKASIDE_ALLOW_NO_ADMIN_TOKEN"] = "true"
        self.proc = subprocess.Popen(
            [str(BIN / "lookaside-serve"), "--backbone", "random:test_vit", "--port", "0"]
            + ["--store", str(store), "--device", "cpu"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # like a terminal: a signal to the group reaches it
        )
        self.output = Output(self.proc)
        self.lines = self.output.lines

    def wait_ready(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [re.search(r"serving on (http://\S+)", line) for line in self.lines]
            url = next((m.group(1) for m in found if m), None)
            if url:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.proc.kill()
        raise AssertionError("".join(self.lines)[-3000:])

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        return self.output.close()


@pytest.mark.parametrize(
    "gap_s", [None, 0.0, 0.05, 0.15, 0.3], ids=["once", "twice", "50ms", "150ms", "300ms"]
)
def test_ctrl_c_is_one_line_and_status_130(tmp_path: Path, gap_s: float | None) -> None:
    server = Serve(tmp_path / "store")
    try:
        url = server.wait_ready()
        assert f"Lookaside serving on {url} with backbone random:test_vit" in "".join(server.lines)
        os.killpg(server.proc.pid, signal.SIGINT)
        if gap_s is not None:
            time.sleep(gap_s)
            os.killpg(server.proc.pid, signal.SIGINT)
        rc = server.proc.wait(60)
    finally:
        out = server.stop()
    assert "Traceback" not in out, out[-4000:]
    assert "CancelledError" not in out, out[-4000:]
    assert "KeyboardInterrupt" not in out, out[-4000:]
    assert rc == 130, out[-2000:]
    assert out.count(SHUTDOWN_LINE) == 1, out[-2000:]
    assert "service.app [-] stopped" in out  # the app's own shutdown ran (engine drained)


def test_a_backbone_that_cannot_load_is_one_line_and_status_3(tmp_path: Path) -> None:
    """A corrupt ``file:`` backbone (past the pre-bind check: the file exists) fails in the
    lifespan: one line with the reason, status 3, no traceback (before: uvicorn logged the
    lifespan's whole traceback)."""
    bad = tmp_path / "backbone.safetensors"
    bad.write_bytes(b"\xff" * 1000)  # a header length no safetensors file has
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKASIDE_")}
    env["LOOKASIDE_ALLOW_NO_ADMIN_TOKEN"] = "true"
    done = subprocess.run(
        [str(BIN / "lookaside-serve"), "--backbone", f"file:{bad}", "--port", "0"]
        + ["--store", str(tmp_path / "store"), "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "Traceback" not in output
    reason = [line for line in output.splitlines() if "cannot start:" in line]
    assert len(reason) == 1, output
    assert str(bad) in reason[0]
    assert "is not a safetensors file" in reason[0]
