"""``lookaside-train crossval``: one training run per test fold, then the mean and spread.

The folds are the dataset's own where it has them (ESC-50: 1-5); otherwise a seeded K-fold is
drawn (:data:`training.args.TrainArgs.num_folds`), or the command refuses with the reason.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

from training.cli_common import format_table, say, train_args_of


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``crossval`` besides the training options."""
    p.add_argument("--folds", default="1,2,3,4,5", help="comma-separated test folds")


def cmd_crossval(ns: argparse.Namespace) -> int:
    from training.pipeline import train

    base = train_args_of(ns)
    folds = [int(f) for f in ns.folds.split(",")]
    rows, scores = [], []
    for fold in folds:
        report = train(replace(base, fold=fold, name=f"{base.adapter_name}-fold{fold}"))
        scores.append(report.metrics["accuracy"])
        rows.append([str(fold), f"{100 * scores[-1]:.2f} %", str(report.run_dir)])
    spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
    say(format_table(rows, ["test fold", "top-1", "checkpoint"]))
    say(
        f"mean top-1 over {len(folds)} folds: {100 * statistics.mean(scores):.2f} % "
        f"+- {100 * spread:.2f}"
    )
    return 0
