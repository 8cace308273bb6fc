"""What a finished run leaves beside its checkpoint: ``metrics.json``, the training curve, the
confusion matrix and (for a split drawn here) ``split.csv``; and the :class:`TrainReport` the CLI
prints."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.distributed as dist
from torch import Tensor

from training import plots
from training.datasets.base import write_split_csv

if TYPE_CHECKING:
    from training.args import TrainArgs
    from training.datasets import Splits
    from training.loop import EvalResult, FitState


@dataclass
class TrainReport:
    """What a finished run produced."""

    run_dir: Path
    metrics: dict[str, float]
    best_epoch: int
    trainable_params: int
    trainable_percent: float
    train_clips_per_s: float
    seconds: float
    stopped_at_epoch: int | None = None
    """Where ``--early-stop`` ended the run (None: it ran every epoch)."""


def jsonable(args: TrainArgs) -> dict[str, Any]:
    """``args`` as plain JSON values (paths as strings): recorded in state and metrics files."""
    out: dict[str, Any] = json.loads(json.dumps(asdict(args), default=str))
    return out


def rank_hashes(tensors: dict[str, Tensor], world: int) -> list[str]:
    """SHA-256 of the adapter's tensors on every rank (equal when DDP kept them in step)."""
    digest = hashlib.sha256()
    for k in sorted(tensors):
        digest.update(k.encode())
        digest.update(tensors[k].detach().cpu().float().numpy().tobytes())
    mine = digest.hexdigest()
    if world <= 1:
        return [mine]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    return [str(g) for g in gathered]


def per_class(confusion: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """Per-class support, recall (accuracy of the class) and precision."""
    rows = []
    for i, label in enumerate(labels):
        support = int(confusion[i].sum())
        predicted = int(confusion[:, i].sum())
        rows.append(
            {
                "label": label,
                "support": support,
                "recall": confusion[i, i] / support if support else 0.0,
                "precision": confusion[i, i] / predicted if predicted else 0.0,
            }
        )
    return [
        {k: (float(v) if isinstance(v, np.floating) else v) for k, v in r.items()} for r in rows
    ]


def write_reports(
    run_dir: Path,
    args: TrainArgs,
    splits: Splits,
    state: FitState,
    results: dict[str, EvalResult],
    final: str,
    report: TrainReport,
    ranks_sha: list[str],
    world: int,
) -> None:
    """Plots, ``split.csv`` (when the split was drawn here) and ``metrics.json`` of a run
    (``stopped_at_epoch``: where ``--early-stop`` ended it, null when it ran every epoch;
    ``warnings``: e.g. the collapse warning of :mod:`training.tracking`)."""
    title = f"{run_dir.parent.name}@{run_dir.name} ({args.method}, {splits.name})"
    plots.training_curve(state.history, run_dir / "training_curve.png", title)
    plots.confusion_matrix(
        results[final].confusion,
        splits.labels,
        run_dir / "confusion_matrix.png",
        f"{title}, {final} split",
    )
    write_split_csv(splits.split_rows, run_dir / "split.csv")
    body = {
        "metrics": report.metrics,
        "best_epoch": state.best_epoch,
        "early_stop": args.early_stop,
        "stopped_at_epoch": state.stopped_at,
        "warnings": state.warnings,
        "history": [asdict(h) for h in state.history],
        "per_class": per_class(results[final].confusion, splits.labels),
        "eval_split": final,
        "trainable_params": report.trainable_params,
        "trainable_percent": report.trainable_percent,
        "train_clips_per_s": report.train_clips_per_s,
        "seconds": report.seconds,
        "distributed": {"world_size": world, "adapter_sha256_per_rank": ranks_sha},
        "args": jsonable(args),
    }
    (run_dir / "metrics.json").write_text(json.dumps(body, indent=2) + "\n")
