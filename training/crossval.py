"""``lookaside-train crossval``: one training run per test fold, then the mean and spread.

The folds are the dataset's own where it has them (ESC-50: 1-5, a CSV ``fold`` column);
otherwise a seeded K-fold, stratified by label and grouped (:mod:`training.datasets.splitting`),
is drawn (:data:`training.args.TrainArgs.num_folds`); a layout whose test split is fixed is
refused with the reason, before anything is trained. Every fold's split is loaded first (the
index, no audio) and two folds with the same test clips are refused. The runs, their scores and
weights digests and the split scheme go to ``<out>/<name>-crossval.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

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
        "1..--num-folds of a drawn K-fold)",
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


def run_folds(base: TrainArgs, folds: list[int]) -> list[TrainReport]:
    """One training run per test fold (checked by :func:`plan`), named ``<name>-fold<k>``."""
    from training.pipeline import train

    return [train(replace(base, fold=f, name=f"{base.adapter_name}-fold{f}")) for f in folds]


def cmd_crossval(ns: argparse.Namespace) -> int:
    base = train_args_of(ns)
    folds, scheme = plan(base, ns.folds)
    rows, scores, runs = [], [], []
    for fold, report in zip(folds, run_folds(base, folds), strict=True):
        accuracy = float(report.metrics["accuracy"])
        scores.append(accuracy)
        rows.append([str(fold), f"{100 * accuracy:.2f} %", str(report.run_dir)])
        sha = load_manifest(report.run_dir).weights_sha256
        runs.append({"fold": fold, "accuracy": accuracy, "run_dir": str(report.run_dir)})
        runs[-1]["weights_sha256"] = sha
    mean = statistics.mean(scores)
    spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
    say(format_table(rows, ["test fold", "top-1", "checkpoint"]))
    say(f"mean top-1 over {len(folds)} folds: {100 * mean:.2f} % +- {100 * spread:.2f}")
    summary = {
        "dataset": base.dataset,
        "data_dir": str(base.data_dir),
        "folds": folds,
        "runs": runs,
        "mean_accuracy": mean,
        "stdev_accuracy": spread,
        "split_scheme": scheme,
    }
    path = Path(base.out) / f"{base.adapter_name}-crossval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    say(f"summary: {path}")
    return 0
