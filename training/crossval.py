"""``lookaside-train crossval``: one training run per test fold, then the mean and spread.

The folds are the dataset's own where it has them (ESC-50: 1-5, a CSV ``fold`` column);
otherwise a seeded K-fold, stratified by label and grouped (:mod:`training.datasets.splitting`),
is drawn (:data:`training.args.TrainArgs.num_folds`); a layout whose test split is fixed is
refused with the reason, before anything is trained. Every fold's split is loaded first (the
index, no audio) and two folds with the same test clips are refused. The runs, their scores and
weights digests and the split scheme go to ``<out>/<name>-crossval.json``, rewritten after every
fold (``complete`` false until the last; a failure keeps the folds done). Under torchrun only
rank 0 prints and writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lookaside.checkpoint.atomic import write_file_atomic
from lookaside.checkpoint.manifest import load_manifest
from lookaside.errors import ConfigError
from training.args import TrainArgs
from training.cli_common import format_table, say, train_args_of
from training.datasets import DatasetSplits, cv_folds, load_dataset
from training.reports import TrainReport


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``crossval`` besides the training options."""
    p.add_argument(
        "--folds",
        default=None,
        help="comma-separated test folds (default: every fold: the dataset's own, or "
        "1..--num-folds (default 5) of a drawn K-fold)",
    )


def chosen_folds(text: str | None, available: list[int]) -> list[int]:
    """``--folds`` parsed and checked against the dataset's folds (None: all of them)."""
    if text is None:
        return list(available)
    try:
        folds = [int(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise ConfigError(
            f"--folds {text!r}: give comma-separated fold numbers, e.g. 1,2"
        ) from None
    unknown = [f for f in folds if f not in available]
    if unknown or not folds or len(set(folds)) != len(folds):
        raise ConfigError(
            f"--folds {text!r}: each fold once, out of the dataset's folds {available}"
        )
    return folds


def _test_set(splits: DatasetSplits) -> frozenset[tuple[Any, ...]]:
    return frozenset(
        (str(c.path), c.start_s, c.end_s, c.h5_key, c.start_sample) for c in splits.test
    )


def plan(args: TrainArgs, folds_text: str | None) -> tuple[list[int], dict[str, Any]]:
    """The folds to train and the split scheme, or an error, before anything is trained: every
    fold's split is loaded (index only) and two folds with the same test clips are refused."""
    from training.pipeline import data_options

    opts = data_options(args)
    folds = chosen_folds(folds_text, cv_folds(args.dataset, opts))
    seen: dict[frozenset[tuple[Any, ...]], int] = {}
    scheme: dict[str, Any] = {}
    for fold in folds:
        splits = load_dataset(args.dataset, replace(opts, fold=fold))
        if not isinstance(splits, DatasetSplits) or not splits.test:
            raise ConfigError(f"fold {fold} of {args.dataset} has no test clips; cannot score it")
        test = _test_set(splits)
        if test in seen:
            raise ConfigError(
                f"folds {seen[test]} and {fold} of {args.dataset} have the same test clips: "
                "that would be the same run twice, not a cross-validation"
            )
        seen[test] = fold
        scheme = {k: v for k, v in splits.scheme.items() if k != "fold"}
    return folds, scheme


def run_folds(
    base: TrainArgs,
    folds: list[int],
    done: Callable[[int, TrainReport], None] | None = None,
) -> list[TrainReport]:
    """One training run per test fold (checked by :func:`plan`), named ``<name>-fold<k>``;
    ``done(fold, report)`` is called after each, so a later failure keeps the earlier ones."""
    from training.pipeline import train

    reports: list[TrainReport] = []
    for fold in folds:
        reports.append(train(replace(base, fold=fold, name=f"{base.adapter_name}-fold{fold}")))
        if done is not None:
            done(fold, reports[-1])
    return reports


def summary(
    base: TrainArgs, folds: list[int], runs: list[dict[str, Any]], scheme: dict[str, Any]
) -> dict[str, Any]:
    """``<name>-crossval.json``: the planned folds, those done so far and their mean / spread
    (``complete`` is false until every planned fold is done)."""
    scores = [float(r["accuracy"]) for r in runs]
    return {
        "dataset": base.dataset,
        "data_dir": str(base.data_dir),
        "folds": folds,
        "folds_done": [r["fold"] for r in runs],
        "complete": len(runs) == len(folds),
        "runs": runs,
        "mean_accuracy": statistics.mean(scores) if scores else None,
        "stdev_accuracy": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "split_scheme": scheme,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` whole (a crash while writing leaves the previous summary)."""
    write_file_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def cmd_crossval(ns: argparse.Namespace) -> int:
    base = train_args_of(ns)
    folds, scheme = plan(base, ns.folds)
    lead = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    path = Path(base.out) / f"{base.adapter_name}-crossval.json"
    runs: list[dict[str, Any]] = []

    def record(fold: int, report: TrainReport) -> None:
        if not lead:
            return
        sha = load_manifest(report.run_dir).weights_sha256
        accuracy = float(report.metrics["accuracy"])
        run_dir = str(report.run_dir)
        runs.append({"fold": fold, "accuracy": accuracy, "run_dir": run_dir, "weights_sha256": sha})
        _write_json(path, summary(base, folds, runs, scheme))

    if lead:
        _write_json(path, summary(base, folds, runs, scheme))
    run_folds(base, folds, record)
    if not lead:
        return 0
    rows = [[str(r["fold"]), f"{100 * r['accuracy']:.2f} %", r["run_dir"]] for r in runs]
    done = summary(base, folds, runs, scheme)
    say(format_table(rows, ["test fold", "top-1", "checkpoint"]))
    say(
        f"mean top-1 over {len(folds)} folds: {100 * done['mean_accuracy']:.2f} % "
        f"+- {100 * done['stdev_accuracy']:.2f}"
    )
    say(f"summary: {path}")
    return 0
