"""A real uvicorn server for an app, in a thread of the test process, until ready (browser tests,
``push`` against a running server, slow-client tests). Configured by the product's
:func:`service.__main__.uvicorn_config`, so tests exercise the server's real connection limits."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI

from service.__main__ import uvicorn_config
from service.deps import AppState


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server started next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test thread is not the main thread
        pass


@contextmanager
def serve_in_thread(app: FastAPI, timeout: float = 120.0) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 (an OS-picked port) until ready; yield its URL."""
    state = app.state.lookaside
    assert isinstance(state, AppState)
    srv = _Server(uvicorn_config(app, state.settings, host="127.0.0.1", port=0))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not (srv.started and srv.servers):
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
        while httpx.get(f"{url}/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.1)
        yield url
    finally:
        srv.should_exit = True
        thread.join(timeout=60)


def wait_until_ready(
    url: str,
    proc: subprocess.Popen[str] | subprocess.Popen[bytes],
    timeout: float = 120.0,
    output: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``url``/readyz until 200 while the server process ``proc`` lives (a server in its own
    process: crash and bomb tests); ``output`` is shown when it exits or never gets ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}:\n{output()}"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server did not become ready within {timeout:g} s:\n{output()}")


class Output:
    """A child process's output (stdout, stderr merged into it), collected line by line by a
    daemon thread: a pipe nobody reads would block the child once the pipe is full."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def close(self) -> str:
        """Wait (bounded) for the reader after the process ended; the whole output."""
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return "".join(self.lines)
