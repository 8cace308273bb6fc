"""The first-run demo (``make demo``): the real trainer, the real server, real HTTP requests.

Offline, on CPU, in about a minute the first time and seconds after that:

1. synthesises two small labelled sound datasets with different label sets ("tones": hums,
   whistles, chirps; "noises": hiss, clicks, buzz, rumble) in the generic folder layout;
2. trains one adapter per dataset with ``python -m training train`` (two different methods) on a
   small demo backbone with **random frozen weights** (no pretrained download: the adapters learn
   the synthetic classes anyway; for real weights see the README);
3. starts ``python -m service`` on the demo store and pushes both adapters with
   ``python -m training push --activate``;
4. sends generated clips through ``POST /classify`` for each adapter and one request naming both,
   prints the answers and the versions that served them;
5. keeps serving (the web page's URL is printed; it offers a few generated example clips, written
   to ``<work>/examples``) until Ctrl-C, or exits with ``--exit-after-requests``.

The second run finds the trained adapters in the store, says so, and skips the training.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

DEMO_BACKBONE = "random:test_vit"
"""The default demo backbone: a 4-block ViT with deterministic random frozen weights (offline).
``LOOKASIDE_BACKBONE`` (e.g. ``timm:vit_base_patch16_224.augreg_in21k``, needs network access) and
``LOOKASIDE_DEVICE`` (``cuda``) run the same demo on a real backbone."""
RATE = 16_000
SECONDS = 1.0
EXAMPLES = [("tones", "hum"), ("tones", "chirp-up"), ("noises", "hiss"), ("noises", "clicks")]
"""The generated clips the web page offers to try (``<work>/examples/<label>.wav``)."""
CLIPS_PER_CLASS = 24
Synth = Callable[[np.random.Generator, np.ndarray], np.ndarray]


def _sine(f0: float, f1: float) -> Synth:
    def make(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
        start = f0 * rng.uniform(0.85, 1.15)
        end = f1 * rng.uniform(0.85, 1.15)
        phase = 2 * np.pi * (start * t + (end - start) * t**2 / (2 * t[-1]))
        return 0.5 * np.sin(phase + rng.uniform(0, 2 * np.pi))

    return make


def _hiss(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    return 0.3 * rng.standard_normal(t.size)


def _clicks(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    out = 0.01 * rng.standard_normal(t.size)
    period = int(RATE / rng.uniform(6, 12))
    out[rng.integers(0, period) :: period] = 0.9
    return out


def _buzz(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    return 0.4 * np.sign(np.sin(2 * np.pi * rng.uniform(110, 160) * t))


def _rumble(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    noise = rng.standard_normal(t.size)
    kernel = np.ones(64) / 64  # a moving average keeps the low frequencies
    return 2.0 * np.convolve(noise, kernel, mode="same")


TASKS: dict[str, dict[str, Synth]] = {
    "tones": {
        "hum": _sine(150, 150),
        "whistle": _sine(2500, 2500),
        "chirp-up": _sine(400, 3000),
        "chirp-down": _sine(3000, 400),
    },
    "noises": {"hiss": _hiss, "clicks": _clicks, "buzz": _buzz, "rumble": _rumble},
}
METHODS = {
    "tones": ["--method", "loaa", "--rank", "8", "--kernels", "attn:T,ffn:F"],
    "noises": ["--method", "lora", "--rank", "8"],
}


def clip(task: str, label: str, seed: int) -> bytes:
    """One synthetic clip as WAV bytes (different every seed)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(RATE * SECONDS)) / RATE
    wave = TASKS[task][label](rng, t) + 0.02 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1, 1).astype(np.float32), RATE, format="WAV")
    return buf.getvalue()


def write_dataset(task: str, root: Path) -> None:
    """``root/<label>/<n>.wav``: the generic folder layout the trainer reads."""
    for k, label in enumerate(TASKS[task]):
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(CLIPS_PER_CLASS):
            (root / label / f"{n:03d}.wav").write_bytes(clip(task, label, 1000 * k + n))


def run(cmd: list[str], env: dict[str, str]) -> None:
    """Run ``cmd``, printed first as a line that can be pasted into a shell."""
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def write_examples(folder: Path) -> list[Path]:
    """A few new clips (seeds the training data never used) for the page's example list."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, (task, label) in enumerate(EXAMPLES):
        path = folder / f"{label}.wav"
        path.write_bytes(clip(task, label, 77_000 + n))
        paths.append(path)
    return paths


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free TCP port on 127.0.0.1")


def train(task: str, work: Path, env: dict[str, str], backbone: str, device: str) -> Path:
    """Train one adapter with the real CLI; returns its ``<name>/<version>`` directory."""
    data = work / "data" / task
    if not data.exists():
        write_dataset(task, data)
    out = work / "trained"
    # fmt: off
    run([sys.executable, "-m", "training", "train", "--dataset", "folder", "--data-dir", str(data),
         "--name", task, "--task", f"demo: synthetic {task}", "--backbone", backbone,
         "--out", str(out), "--frames", "128", "--epochs", "6", "--batch-size", "16",
         "--lr", "3e-3", "--seed", "0", "--device", device, "--no-specaug",
         *METHODS[task]], env)
    # fmt: on
    versions = [p for p in (out / task).iterdir() if p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name))


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server at {url} was not ready within {timeout:.0f} s")


def show(answer: dict[str, object]) -> None:
    for result in answer["results"]:  # type: ignore[attr-defined]
        top = ", ".join(f"{x['label']} {x['score']:.2f}" for x in result["labels"][:3])
        print(f"    {result['adapter']}@{result['version']}: {top}")


def demo_requests(url: str) -> None:
    """A few generated clips per adapter, and one request naming both adapters."""
    with httpx.Client(base_url=url, timeout=60) as client:
        for task, labels in TASKS.items():
            for label in list(labels)[:2]:
                response = client.post(
                    "/classify",
                    files={"file": (f"{label}.wav", clip(task, label, 99_000), "audio/wav")},
                    data={"adapter": task, "top_k": "3"},
                )
                response.raise_for_status()
                print(f"  a new '{label}' clip -> {task}:")
                show(response.json())
        response = client.post(
            "/classify",
            content=clip("tones", "chirp-up", 99_001),
            params={"adapter": "tones,noises", "top_k": "2"},
            headers={"Content-Type": "audio/wav"},
        )
        response.raise_for_status()
        print("  a 'chirp-up' clip through both adapters in one request (raw body):")
        show(response.json())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path(".demo"), help="demo files (store too)")
    parser.add_argument("--port", type=int, default=8000, help="preferred port")
    parser.add_argument(
        "--exit-after-requests", action="store_true", help="stop after the demo requests"
    )
    args = parser.parse_args(argv)
    # SIGTERM / a closed terminal: leave through the ``finally`` below, which stops the server.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    try:
        return _run(args.work.resolve(), args.port, args.exit_after_requests)
    except KeyboardInterrupt:  # Ctrl-C while training or pushing (the child said so already)
        print("Demo interrupted.", file=sys.stderr)
        return 130


def _prepare(work: Path, backbone: str, device: str) -> tuple[Path, list[str]]:
    """The store for ``backbone`` and the tasks it lacks (none: say that it is reused)."""
    # Adapters only load on the backbone they were trained on: one store per backbone.
    store = work / ("store" if backbone == DEMO_BACKBONE else "store-" + backbone.replace("/", "_"))
    if backbone == DEMO_BACKBONE:
        print(
            f"Demo backbone {backbone} (passed explicitly): random frozen weights, offline, not a "
            "pretrained model. Lookaside's default backbone needs a download; see the README."
        )
    else:
        print(f"Demo backbone {backbone} on {device}.")
    missing = [t for t in TASKS if not (store / t).is_dir()]
    if not missing:
        print(
            f"Reusing the adapters trained by an earlier run ({', '.join(TASKS)} in {store}): "
            f"no training this time. Delete {work} to train them again."
        )
    return store, missing


def _run(work: Path, preferred_port: int, exit_after_requests: bool) -> int:
    backbone = os.environ.get("LOOKASIDE_BACKBONE", DEMO_BACKBONE)
    device = os.environ.get("LOOKASIDE_DEVICE", "cpu")
    token = os.environ.get("LOOKASIDE_ADMIN_TOKEN") or secrets.token_hex(16)
    env = {**os.environ, "LOOKASIDE_ADMIN_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    store, missing = _prepare(work, backbone, device)
    trained = {task: train(task, work, env, backbone, device) for task in missing}
    examples = work / "examples"
    write_examples(examples)

    port = free_port(preferred_port)
    url = f"http://127.0.0.1:{port}"
    # fmt: off
    server = subprocess.Popen(
        [sys.executable, "-m", "service", "--backbone", backbone, "--store", str(store),
         "--examples-dir", str(examples), "--port", str(port), "--device", "cpu",
         "--max-wait-ms", "5", "--log-level", "warning"],
        env=env)
    # fmt: on
    try:
        wait_ready(url, server)
        for path in trained.values():
            run(
                [sys.executable, "-m", "training", "push", str(path), "--url", url, "--activate"],
                env,
            )
        demo_requests(url)
        print(f"\nLookaside is serving at {url}  (web page: {url}/ , API docs: {url}/docs)")
        print(f"The page offers {len(EXAMPLES)} example clips from {examples}.")
        print(
            "Live: the page's Live tab streams your microphone; from a terminal, "
            f"lookaside-stream {examples / 'hum.wav'} --adapter tones,noises --url {url}"
        )
        if "LOOKASIDE_ADMIN_TOKEN" not in os.environ:
            print(f"Admin token for this run: {token}")
        if exit_after_requests:
            return 0
        print("Press Ctrl-C to stop.", flush=True)
        server.wait()
        return server.returncode or 0
    except KeyboardInterrupt:
        _stop(server, interrupted=True)
        print("Stopped the demo server (Ctrl-C).", flush=True)
        return 130
    finally:
        _stop(server)


def _stop(server: subprocess.Popen[bytes], interrupted: bool = False) -> None:
    """Stop the server with one SIGINT. Ctrl-C in a terminal reaches the server too (same
    process group): then give it a moment to stop on that before sending one of our own."""
    if server.poll() is not None:
        return
    try:
        server.wait(timeout=3 if interrupted else 0.01)
        return
    except subprocess.TimeoutExpired:
        server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(5)


if __name__ == "__main__":
    sys.exit(main())
