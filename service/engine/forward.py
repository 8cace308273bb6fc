"""One forward over one batch: the rows' inputs on the device, the task kind's forward, the
logits back on the host, split per job.

Thread: the **engine worker** (``lookaside-engine``) only; it owns the model this runs.

CUDA path: the rows are stacked into a pinned host buffer and copied with ``non_blocking=True``;
the forward runs under ``torch.inference_mode`` and ``torch.autocast`` with the settings' dtype;
logits come back as fp32 on the host. The CPU path is the same code without pinning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor

from lookaside.model import MultiAdapterModel
from service.engine.batcher import Slice

__all__ = ["forward_batch"]


def forward_batch(
    model: MultiAdapterModel,
    batch: Sequence[Slice],
    *,
    device: torch.device,
    compute_dtype: torch.dtype,
) -> list[Tensor]:
    """Every row of ``batch`` through the task kind's forward with each row's adapter: per-slice
    fp32 host logits (``[rows, 0]`` for a slice without adapter: the warm-up)."""
    task = batch[0].job.task
    ids: list[str | None] = [p.job.adapter_id for p in batch for _ in range(p.rows)]
    parts = [task.take(p.job.inputs, p.start, p.stop) for p in batch]
    inputs = tuple(_to_device([part[i] for part in parts], device) for i in range(len(parts[0])))
    autocast = (
        torch.autocast(device.type, dtype=compute_dtype)
        if compute_dtype != torch.float32
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast:
        logits = task.forward(model, inputs, ids)
    out: list[Tensor] = []
    row = 0
    for part in batch:
        rows = logits[row : row + part.rows]
        row += part.rows
        if part.job.adapter_id is None:
            out.append(torch.zeros(part.rows, 0))
        else:
            out.append(torch.stack([r for r in rows if r is not None]).float().to("cpu"))
    return out


def _to_device(features: list[Tensor], device: torch.device) -> Tensor:
    """Stack the rows on the host (pinned on CUDA) and copy them over asynchronously."""
    if device.type != "cuda":
        return torch.cat(features).to(device)
    rows = sum(int(f.shape[0]) for f in features)
    staging = torch.empty((rows, *features[0].shape[1:]), dtype=torch.float32, pin_memory=True)
    torch.cat(features, out=staging)
    return staging.to(device, non_blocking=True)
