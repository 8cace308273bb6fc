"""``lookaside-serve --ray --replicas 2``: the one command starts a local Ray instance, deploys,
prints the URL, answers over HTTP, and on Ctrl-C drains and exits 130 without a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.service.svc_support import (
    ADMIN,
    BACKBONE,
    encode,
    make_checkpoint,
    put_in_store,
    tiny,
)
from tests.live_server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_one_command_serves_on_ray_and_stops_cleanly(tmp_path: Path) -> None:
    store = tmp_path / "store"
    put_in_store(store, make_checkpoint(tiny(), "esc", seed=3))
    put_in_store(store, make_checkpoint(tiny(), "kws", seed=4))
    port = free_port()
    env = {
        **os.environ,
        "LOOKASIDE_BACKBONE": BACKBONE,
        "LOOKASIDE_DEVICE": "cpu",
        "LOOKASIDE_STORE": str(store),
        "LOOKASIDE_ADMIN_TOKEN": ADMIN,
        "LOOKASIDE_PORT": str(port),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--ray", "--replicas", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,  # the store path is absolute; nothing depends on the caller's directory
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while not any("Lookaside serving on" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
        assert f"Lookaside serving on {url} over Ray Serve: 2 model replica(s)" in "".join(lines)
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
        r = httpx.post(
            f"{url}/classify",
            params={"adapter": "esc,kws"},
            content=encode(1.0),
            headers={"Content-Type": "audio/wav"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert [(x["adapter"], x["version"]) for x in r.json()["results"]] == [
            ("esc", 1),
            ("kws", 1),
        ]
        assert httpx.get(f"{url}/openapi.json", timeout=30).json()["info"]["title"] == "Lookaside"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        reader.join(10)
        if proc.stdout is not None:
            proc.stdout.close()
    out = "".join(lines)
    assert "Traceback" not in out, out
