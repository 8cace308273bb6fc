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

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import training.loop as loop
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


def _stop_rank(rank: int, port: int, accuracies: list[float], out: Path) -> None:
    """One rank of a plain fit whose validation is scripted per rank."""
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool (it hangs)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=2)
    epochs = iter(accuracies)

    def scripted(*_: object, **__: object) -> loop.EvalResult:
        acc = next(epochs)
        return loop.EvalResult(1 - acc, acc, 0.0, np.zeros((2, 2), dtype=np.int64), 4)

    loop.evaluate = scripted  # type: ignore[assignment]
    module = nn.Linear(8, 2)
    data = DataLoader(TensorDataset(torch.randn(8, 8), torch.arange(8) % 2), batch_size=4)
    state = loop.fit(
        module,
        list(module.parameters()),
        data,
        data,
        loop.LoopConfig(epochs=6, lr=1e-3, progress=False, early_stop=2),
        num_classes=2,
        device=torch.device("cpu"),
        snapshot=lambda: {},
    )
    out.write_text(json.dumps({"stopped_at": state.stopped_at, "epoch": state.epoch}))
    dist.destroy_process_group()
    os._exit(0)


def test_ranks_that_disagree_stop_early_together_at_rank_0s_epoch(tmp_path: Path) -> None:
    # Rank 0's accuracy stalls after epoch 1 (it would stop after epoch 3); rank 1's keeps
    # improving. A rank stopping alone would leave the other blocked in DDP's next all-reduce.
    scripts = [[0.5, 0.4, 0.3, 0.2, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]
    ctx = mp.get_context("fork")
    port = free_port()
    outs = [tmp_path / f"rank{r}.json" for r in range(2)]
    procs = [
        ctx.Process(target=_stop_rank, args=(r, port, scripts[r], outs[r]), daemon=True)
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        if p.is_alive():  # a hung rank fails the test instead of blocking pytest's exit
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    results = [json.loads(o.read_text()) for o in outs]
    assert results == [{"stopped_at": 3, "epoch": 3}] * 2
