"""The real server: ``python -m service`` as a subprocess on 127.0.0.1, driven over HTTP.

Uploads, activations and deletes, then ``kill -9``; a new server on the same store serves the same
adapters and active versions with the same scores. Then a kill during an upload: the restarted
server serves exactly what was acknowledged before it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.service.svc_support import (
    ADMIN,
    BACKBONE,
    checkpoint_bytes,
    encode,
    make_checkpoint,
    tiny,
)
from tests.live_server import Output, free_port, wait_until_ready

AUTH = {"Authorization": f"Bearer {ADMIN}"}
WAV = {"Content-Type": "audio/wav"}


class Server:
    """``python -m service`` on a free port, its output collected."""

    def __init__(self, store: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "LOOKASIDE_BACKBONE": BACKBONE,
            "LOOKASIDE_DEVICE": "cpu",
            "LOOKASIDE_STORE": str(store),
            "LOOKASIDE_ADMIN_TOKEN": ADMIN,
            "LOOKASIDE_PORT": str(self.port),
            "LOOKASIDE_LOG_FORMAT": "json",
            "OMP_NUM_THREADS": "1",
            **(extra_env or {}),
        }
        env = {k: v for k, v in env.items() if v}  # "" removes a variable
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = Output(self.proc)
        self.lines = self.output.lines

    def wait_ready(self, timeout: float = 120) -> None:
        wait_until_ready(self.url, self.proc, timeout, lambda: "".join(self.lines))

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.output.close()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "adapters_store"


@pytest.fixture
def start(store: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def _start() -> Server:
        server = Server(store)
        servers.append(server)
        server.wait_ready()
        return server

    yield _start
    for server in servers:
        server.stop()


def _upload(url: str, ckpt: Any, *, activate: bool = False) -> httpx.Response:
    manifest, weights = checkpoint_bytes(ckpt)
    return httpx.post(
        f"{url}/adapters",
        params={"activate": str(activate).lower()},
        files={"manifest": ("manifest.json", manifest), "weights": ("a.safetensors", weights)},
        headers=AUTH,
        timeout=60,
    )


def _served(url: str, names: list[str], clip: bytes) -> dict[str, Any]:
    out = {}
    for name in names:
        r = httpx.post(f"{url}/classify?adapter={name}", content=clip, headers=WAV, timeout=60)
        assert r.status_code == 200, r.text
        (result,) = r.json()["results"]
        out[name] = (result["version"], result["labels"])
    return out


def test_restart_after_kill9_serves_the_same_adapters_and_versions(start: Any) -> None:
    backbone = tiny()
    clip = encode(1.0, seed=2)
    first = start()
    assert any(first.url in line for line in first.lines)  # the URL is printed

    a = [make_checkpoint(backbone, "esc50", method="loaa", seed=s) for s in (1, 2, 3)]
    b = make_checkpoint(backbone, "speech", method="lora", seed=4)
    c = make_checkpoint(backbone, "gone", method="bottleneck", seed=5)
    assert _upload(first.url, a[0]).status_code == 201  # v1 (first version: active)
    assert _upload(first.url, a[1], activate=True).status_code == 201  # v2 active
    assert _upload(first.url, a[2]).status_code == 201  # v3 stored, not active
    assert _upload(first.url, b).status_code == 201
    assert _upload(first.url, c).status_code == 201
    r = httpx.post(f"{first.url}/adapters/esc50/activate", json={"version": 1}, headers=AUTH)
    assert r.status_code == 200, r.text  # rollback to v1
    assert httpx.delete(f"{first.url}/adapters/gone", headers=AUTH).status_code == 200
    r = httpx.delete(f"{first.url}/adapters/esc50/versions/2", headers=AUTH)
    assert r.status_code == 200, r.text
    before = _served(first.url, ["esc50", "esc50@3", "speech"], clip)
    assert before["esc50"][0] == 1
    r = httpx.post(
        f"{first.url}/classify?adapter=esc50",
        content=clip,
        headers={**WAV, "X-Request-ID": "e2e-req-1"},
    )
    assert r.headers["x-request-id"] == "e2e-req-1"
    time.sleep(0.2)
    # JSON log lines of that request (the access log included) carry its id
    assert any('"request_id": "e2e-req-1"' in line for line in first.lines), first.lines[-5:]
    first.kill9()

    second = start()
    assert _served(second.url, ["esc50", "esc50@3", "speech"], clip) == before
    r = httpx.post(f"{second.url}/classify?adapter=gone", content=clip, headers=WAV)
    assert r.status_code == 404
    r = httpx.post(f"{second.url}/classify?adapter=esc50@2", content=clip, headers=WAV)
    assert r.status_code == 404
    assert "1, 3 (active: 1)" in r.json()["detail"]

    # SIGTERM with requests in flight: every accepted request is answered, then the process ends
    codes: list[int | str] = []

    def ask() -> None:
        try:
            r = httpx.post(
                f"{second.url}/classify?adapter=esc50,speech", content=clip, headers=WAV, timeout=60
            )
            codes.append(r.status_code)
        except httpx.ConnectError:
            codes.append("refused")  # not accepted: the listener had closed (allowed)
        except httpx.HTTPError as exc:
            codes.append(repr(exc))  # accepted, then dropped: never allowed

    askers = [threading.Thread(target=ask) for _ in range(6)]
    for t in askers:
        t.start()
    time.sleep(1.5)
    second.proc.send_signal(signal.SIGTERM)
    for t in askers:
        t.join(60)
    assert len(codes) == 6
    assert set(codes) <= {200, "refused"}, codes
    assert 200 in codes
    # uvicorn re-raises the signal after its graceful shutdown: -SIGTERM, after our drain log
    assert second.proc.wait(60) in (0, -signal.SIGTERM)
    second.stop()  # joins the output reader
    assert any('"message": "stopped"' in line for line in second.lines), second.lines[-5:]


def test_kill9_during_an_upload_leaves_only_what_was_acknowledged(start: Any, store: Path) -> None:
    backbone = tiny()
    clip = encode(1.0, seed=3)
    first = start()
    ok = make_checkpoint(backbone, "esc50", method="lora", seed=6)
    assert _upload(first.url, ok).status_code == 201
    before = _served(first.url, ["esc50"], clip)

    # a second version whose body arrives slowly: the server is killed mid-upload
    manifest, weights = checkpoint_bytes(make_checkpoint(backbone, "esc50", method="lora", seed=7))
    boundary = "lookasideboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="manifest"; '
        f'filename="manifest.json"\r\n\r\n'.encode()
        + manifest
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="weights"; '
        f'filename="a.safetensors"\r\n\r\n'.encode()
        + weights
        + f"\r\n--{boundary}--\r\n".encode()
    )
    sent = threading.Event()

    def slow() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        sent.set()
        time.sleep(5)
        yield body[len(body) // 2 :]

    def upload() -> None:
        with contextlib.suppress(httpx.TransportError):  # the server dies under it
            httpx.post(
                f"{first.url}/adapters?activate=true",
                content=slow(),
                headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
                timeout=30,
            )

    thread = threading.Thread(target=upload)
    thread.start()
    assert sent.wait(30)
    time.sleep(0.2)
    first.kill9()
    thread.join(30)

    second = start()
    assert _served(second.url, ["esc50"], clip) == before
    r = httpx.get(f"{second.url}/adapters/esc50")
    assert r.status_code == 200
    assert [v["version"] for v in r.json()["versions"]] == [1]
    leftovers = [p.name for p in (store / "esc50").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_port_0_prints_the_port_the_os_picked(tmp_path: Path) -> None:
    """``python -m service --port 0`` binds first and prints the real URL, which then answers."""
    env = {
        **os.environ,
        "LOOKASIDE_BACKBONE": BACKBONE,
        "LOOKASIDE_DEVICE": "cpu",
        "LOOKASIDE_STORE": str(tmp_path / "store"),
        "LOOKASIDE_ADMIN_TOKEN": ADMIN,
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", "0", "--host", "127.0.0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    drain = threading.Thread(target=proc.stdout.read, daemon=True)
    try:
        seen: list[str] = []
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "server exited before printing its URL:\n" + "".join(seen)
            seen.append(line)
            if "serving on http://" in line:
                url = line.split("serving on ", 1)[1].split(" ", 1)[0]
        assert url is not None, "".join(seen)
        host, _, port = url.removeprefix("http://").rpartition(":")
        assert host == "127.0.0.1", url
        assert port.isdigit(), url
        assert int(port) > 0, url
        drain.start()  # keep the pipe drained
        while time.monotonic() < deadline:
            assert proc.poll() is None, "server exited:\n" + "".join(seen)
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError(f"{url} never became ready")
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        if drain.is_alive():
            drain.join(10)
        proc.stdout.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_token_file_redacted_queries_and_a_clean_stop(tmp_path: Path, sig: signal.Signals) -> None:
    """The admin token from LOOKASIDE_ADMIN_TOKEN_FILE guards the admin routes; a token pasted
    into a query string never reaches the log; Ctrl-C / SIGTERM stop without a traceback."""
    token_file = tmp_path / "admin_token"
    token_file.write_text("file-token-123\n")
    server = Server(
        tmp_path / "store",
        extra_env={"LOOKASIDE_ADMIN_TOKEN": "", "LOOKASIDE_ADMIN_TOKEN_FILE": str(token_file)},
    )
    try:
        server.wait_ready()
        url = server.url
        assert httpx.delete(f"{url}/adapters/nope").status_code == 401
        wrong = {"Authorization": f"Bearer {ADMIN}"}
        assert httpx.delete(f"{url}/adapters/nope", headers=wrong).status_code == 403
        right = {"Authorization": "Bearer file-token-123"}
        assert httpx.delete(f"{url}/adapters/nope", headers=right).status_code == 404
        r = httpx.post(
            f"{url}/classify?adapter=nope&token=QUERY-SECRET-42", content=b"x", headers=WAV
        )
        assert r.status_code in (404, 415, 422)
        time.sleep(0.3)
        server.proc.send_signal(sig)
        rc = server.proc.wait(60)
    finally:
        server.stop()
    out = "".join(server.lines)
    assert "/classify?<redacted>" in out  # the access line is there, its query is not
    assert "QUERY-SECRET-42" not in out
    assert "file-token-123" not in out
    assert "Traceback" not in out, out[-3000:]
    if sig == signal.SIGINT:
        assert rc == 130, out[-2000:]
        assert sum("shut down cleanly" in line for line in server.lines) == 1
    else:
        assert rc in (0, -signal.SIGTERM)
    assert any('"message": "stopped"' in line for line in server.lines), out[-2000:]
