"""A hub backbone that is not cached fails in seconds when the hub cannot be reached, with a
message naming the backbone and the way out (issue 18: it took ~60 s of hub retries before).

Each case runs in a fresh process: huggingface_hub reads HF_HUB_OFFLINE / HF_ENDPOINT at import.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lookaside.backbones import DEFAULT_BACKBONE

BIN = Path(sys.executable).parent
AST = "hf:MIT/ast-finetuned-audioset-10-10-0.4593"
LOAD = "from lookaside.backbones import load_backbone; load_backbone({source!r})"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOOKASIDE_", "HF_")) and k.lower() not in ("https_proxy", "all_proxy")
    }
    env.update({"HF_HOME": str(tmp_path / "hf"), "LOOKASIDE_ALLOW_NO_ADMIN_TOKEN": "true"})
    env.update(extra)
    return env


def _run(argv: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    return proc, time.monotonic() - t0


@pytest.mark.parametrize(
    ("source", "hub"),
    [(DEFAULT_BACKBONE, "offline"), (DEFAULT_BACKBONE, "closed"), (AST, "closed")],
    ids=["timm-HF_HUB_OFFLINE", "timm-unreachable-endpoint", "hf-unreachable-endpoint"],
)
def test_uncached_hub_backbone_fails_fast_with_the_fix(
    tmp_path: Path, source: str, hub: str
) -> None:
    if hub == "offline":
        env = _env(tmp_path, HF_HUB_OFFLINE="1")
    else:
        env = _env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    proc, seconds = _run([sys.executable, "-c", LOAD.format(source=source)], env)
    assert proc.returncode != 0
    assert seconds < 10, seconds
    err = proc.stderr
    assert "WeightLoadError" in err
    assert f"backbone {source!r} is not in the Hugging Face cache" in err
    assert "HF_HUB_OFFLINE is set" in err if hub == "offline" else "Connection refused" in err
    assert "--backbone file:" in err
    assert "save_backbone" in err
    assert "Retrying" not in err  # no hub retries happened


def test_server_says_it_in_one_line_before_binding(tmp_path: Path) -> None:
    """lookaside-serve with the default backbone, offline: exit 2 and one sentence, no
    traceback, no minute of retries, no URL printed for a server that never starts."""
    proc, seconds = _run(
        [str(BIN / "lookaside-serve"), "--port", "0", "--store", str(tmp_path / "store")],
        _env(tmp_path, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 2, proc.stderr
    assert seconds < 10, seconds
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"lookaside-serve: backbone {DEFAULT_BACKBONE!r} is not in")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "serving on" not in proc.stdout


def test_train_says_it_in_one_line(tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for n in range(3):
            sf.write(tmp_path / "data" / label / f"{n}.wav", np.zeros(8000, np.float32), 16_000)
    proc, seconds = _run(
        [str(BIN / "lookaside-train"), "train", "--data-dir", str(tmp_path / "data")],
        _env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}"),
    )
    assert proc.returncode == 2, proc.stderr
    assert seconds < 15, seconds
    assert "Traceback" not in proc.stderr
    assert f"error: backbone {DEFAULT_BACKBONE!r} is not in the Hugging Face cache" in proc.stderr


def test_cached_weights_load_offline_without_retries(tmp_path: Path) -> None:
    """Cached but unreachable: huggingface_hub is put in offline mode, so the cache is read at
    once (the check looks at the cache layout huggingface_hub itself reads)."""
    repo = "models--timm--vit_base_patch16_224.augreg_in21k"
    snapshot = tmp_path / "hf" / "hub" / repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"x")
    (tmp_path / "hf" / "hub" / repo / "refs").mkdir()
    (tmp_path / "hf" / "hub" / repo / "refs" / "main").write_text("0" * 40)
    code = (
        "from huggingface_hub import constants\n"
        "from lookaside.backbones import check_available\n"
        f"check_available({DEFAULT_BACKBONE!r})\n"
        "print('offline', constants.is_offline_mode())\n"
    )
    env = _env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    proc, seconds = _run([sys.executable, "-c", code], env)
    assert proc.returncode == 0, proc.stderr
    assert "offline True" in proc.stdout
    assert seconds < 10
    # and with the hub reachable-looking nothing is switched: random sources need nothing
    proc, _ = _run(
        [sys.executable, "-c", code.replace(repr(DEFAULT_BACKBONE), "'random:test_vit'")],
        _env(tmp_path),
    )
    assert "offline False" in proc.stdout, proc.stderr
