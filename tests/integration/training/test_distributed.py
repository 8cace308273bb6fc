"""DistributedDataParallel over the adapter parameters only: 2 CPU processes, gloo backend.

The processes are forked from the test (the same path ``torchrun`` takes through
``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR``, without re-importing torch twice); each trains on its
half of every epoch and both must end with bit-identical adapter weights.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import torch

from tests.live_server import free_port
from training.cli import main


def _rank(rank: int, port: int, argv: list[str]) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    code = main(argv)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    os._exit(code)


def test_two_gloo_processes_end_with_identical_adapters(
    synth_folder: Path, backbone_file: Path, tmp_path: Path
) -> None:
    argv = [
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        str(synth_folder),
        "--backbone",
        f"file:{backbone_file}",
        "--out",
        str(tmp_path),
        "--frames",
        "64",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--method",
        "loaa",
        "--rank",
        "4",
        "--device",
        "cpu",
        "--no-progress",
    ]
    ctx = mp.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, argv)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0]
    report = json.loads((tmp_path / "folder" / "1" / "metrics.json").read_text())
    hashes = report["distributed"]["adapter_sha256_per_rank"]
    assert report["distributed"]["world_size"] == 2
    assert len(hashes) == 2
    assert hashes[0] == hashes[1]
    assert not (tmp_path / "folder" / "2").exists()  # one checkpoint, written by rank 0
