"""A process killed with SIGKILL while writing to the adapter store never leaves a half adapter.

A real subprocess uploads versions in a loop (``AdapterStore.put``, with slow fsyncs so the kill
lands inside a write) and is killed at a chosen point of a write, several rounds on one store.
After each kill a fresh ``AdapterStore`` on the same root lists only complete versions, every
acknowledged version is there and loads (validated), the active pointer names a stored version,
and ``cleanup()`` removes what the kill left behind.

A kill between a first version's rename and its ``ACTIVE`` write leaves a name with a complete
version and no active one: ``cleanup()`` (startup) makes it active, and so does retrying the
identical upload with ``activate=True`` on a store not yet repaired.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lookaside.adapters import HeadConfig
from lookaside.backbones import build_random
from lookaside.bank import AdapterBank
from lookaside.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, AdapterCheckpoint
from lookaside.features import FeatureConfig
from service.store import AdapterStore

REPO = Path(__file__).resolve().parents[2]

WRITER = r"""
import json, os, sys, time
from pathlib import Path

_fsync = os.fsync
def slow_fsync(fd):
    print("sync", flush=True)  # the parent counts these to kill inside a write
    time.sleep(0.02)
    _fsync(fd)
os.fsync = slow_fsync

from lookaside.backbones import build_random
from service.store import AdapterStore

src, root, round_ = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
manifest = json.loads((src / "manifest.json").read_bytes())
weights = (src / "adapter.safetensors").read_bytes()
backbone = build_random("test_vit", seed=1)
store = AdapterStore(root)
print("ready", flush=True)
for i in range(10_000):
    manifest["metrics"] = {"upload": float(round_ * 10_000 + i)}  # new content each time
    result = store.put(json.dumps(manifest).encode(), weights, backbone=backbone,
                       activate=i % 2 == 0)
    print(f"acked {result.version}", flush=True)
"""


def _upload_dir(tmp: Path) -> Path:
    """A ~0.5 MB bottleneck adapter for the tiny backbone, saved as an upload would send it."""
    backbone = build_random("test_vit", seed=1)
    bank = AdapterBank(backbone.cfg)
    bank.add("x@1", "bottleneck", {"rank": 256}, HeadConfig(num_classes=3))
    ckpt = AdapterCheckpoint.from_bank(
        bank,
        "x@1",
        name="esc50",
        version=1,
        task="crash test",
        task_type="multiclass",
        labels=["a", "b", "c"],
        features=FeatureConfig(),
        backbone=backbone,
    )
    ckpt.save(tmp / "upload")
    return tmp / "upload"


def _kill_inside_a_write(
    src: Path, root: Path, round_: int, syncs: int, *, after_first_ack: bool = True
) -> set[int]:
    """Run the writer until it has acknowledged one upload (unless ``after_first_ack`` is off),
    then SIGKILL it while it is inside the ``syncs``-th fsync after that. Returns the versions
    it acknowledged."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    acked: set[int] = set()
    seen_syncs = 0
    deadline = time.monotonic() + 120
    with (
        tempfile.TemporaryFile("w+") as errors,
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(src), str(root), str(round_)],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            cwd=REPO,
            env=env,
        ) as proc,
    ):
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if line.startswith("acked "):
                    acked.add(int(line.split()[1]))
                elif line.startswith("sync") and (acked or not after_first_ack):
                    seen_syncs += 1
                    if seen_syncs == syncs:
                        break  # the writer now sleeps inside this fsync
                assert time.monotonic() < deadline, "the writer made no progress"
            else:
                errors.seek(0)
                raise AssertionError(f"the writer exited early: {errors.read()}")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    return acked


def test_sigkill_mid_write_leaves_only_complete_versions() -> None:
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        backbone = build_random("test_vit", seed=1)
        src = _upload_dir(tmp)
        root = tmp / "store"
        acknowledged: set[int] = set()
        leftovers_seen = 0
        # The first kill is inside the first fsync of a version dir's files (a temp dir exists);
        # the others at random points of the next writes.
        for round_, syncs in enumerate([1, *(rng.randint(2, 8) for _ in range(2))]):
            acknowledged |= _kill_inside_a_write(src, root, round_, syncs)

            store = AdapterStore(root)
            versions = store.versions("esc50")
            assert acknowledged <= set(versions), (acknowledged, versions)
            assert len(set(versions) - acknowledged) <= 1  # at most the one being acknowledged
            assert store.active("esc50") in versions
            for version in versions:
                ckpt = store.load("esc50", version, backbone=backbone)
                assert ckpt.manifest.version == version
            hidden = sorted(p.name for p in (root / "esc50").iterdir() if p.name.startswith("."))
            removed = store.cleanup()
            assert sorted(p.name for p in removed) == hidden
            leftovers_seen += bool(hidden)
            assert not list(root.rglob(".*")), "cleanup left temporaries"
            assert sorted(p.name for p in (root / "esc50").iterdir() if not p.name.isdigit()) == [
                "ACTIVE",
                "LAST",
            ]
            assert store.versions("esc50") == versions
            acknowledged = set(versions)  # completed-but-unacknowledged versions are kept too

        assert leftovers_seen >= 1  # at least one kill really interrupted a write
        # The store keeps working and never reuses a number.
        manifest = (src / MANIFEST_FILE).read_bytes()
        result = AdapterStore(root).put(
            manifest, (src / WEIGHTS_FILE).read_bytes(), backbone=backbone
        )
        assert result.version > max(acknowledged)


# fsyncs of a first upload: manifest, weights, temp dir, parent after the rename (4); LAST and
# its dir (5, 6); ACTIVE and its dir (7, 8).
@pytest.mark.parametrize("syncs", [4, 7])
def test_sigkill_between_a_first_version_and_its_pointer_is_repaired(syncs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        backbone = build_random("test_vit", seed=1)
        src = _upload_dir(tmp)
        root = tmp / "store"
        assert _kill_inside_a_write(src, root, 0, syncs, after_first_ack=False) == set()

        store = AdapterStore(root)
        assert (store.versions("esc50"), store.active("esc50")) == ([1], None)  # the crash state
        # Retrying the identical upload (what the writer sent first) activates it ...
        retried = tmp / "retried"
        shutil.copytree(root, retried)
        manifest = json.loads((src / MANIFEST_FILE).read_bytes())
        manifest["metrics"] = {"upload": 0.0}
        again = AdapterStore(retried).put(
            json.dumps(manifest).encode(),
            (src / WEIGHTS_FILE).read_bytes(),
            backbone=backbone,
            activate=True,
        )
        assert (again.version, again.created, again.active) == (1, False, True)
        assert AdapterStore(retried).active("esc50") == 1
        # ... and so does the startup cleanup, on its own.
        store.cleanup()
        assert store.active("esc50") == 1
        fresh = AdapterStore(root)
        assert (fresh.versions("esc50"), fresh.active("esc50")) == ([1], 1)
        assert fresh.load("esc50", 1, backbone=backbone).manifest.version == 1
        assert not list(root.rglob(".*")), "cleanup left temporaries"
