"""ESC-50 (Piczak, 2015): 2,000 five-second clips, 50 classes, 5 folds.

Layout (github.com/karolpiczak/ESC-50): ``meta/esc50.csv`` with columns
``filename,fold,target,category,esc10,src_file,take`` and ``audio/<filename>``. ``--fold k`` is the
test fold (the papers report the mean over k = 1..5, see ``crossval``); validation is a seeded,
stratified share of the other four folds, so the test fold never selects the best epoch, drawn by
``src_file`` (clips cut from one Freesound recording stay together; ``--group-by`` changes the
key). ``--dataset esc10`` is ESC-10: the rows marked ``esc10`` True, the same folds, its ten
classes re-indexed 0..9 in target order.
"""

from __future__ import annotations

from pathlib import Path

from lookaside.features import FeatureConfig
from training.datasets.base import (
    Clip,
    DatasetError,
    DatasetSplits,
    check_files,
    read_csv,
    require_dir,
)
from training.datasets.options import DataOptions
from training.datasets.splitting import draw, no_num_folds, resolve_groups

COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
FEATURES = FeatureConfig(target_frames=512)
"""5 s clips: 512 frames (AST's ESC-50 setting), AudioSet mean / std."""
FOLDS = (1, 2, 3, 4, 5)
ESC10_TARGETS = frozenset({0, 1, 10, 11, 12, 20, 21, 38, 40, 41})
"""ESC-50 targets of the ESC-10 classes (dog, rooster, rain, sea_waves, crackling_fire,
crying_baby, sneezing, clock_tick, helicopter, chainsaw): the rows marked ``esc10`` True."""


def load(opts: DataOptions) -> DatasetSplits:
    """ESC-50 with ``opts.fold`` (default 1) as the test fold."""
    return _load(opts, esc10=False)


def load_esc10(opts: DataOptions) -> DatasetSplits:
    """ESC-10: the rows of ``meta/esc50.csv`` marked ``esc10`` True, labels 0..9 in target order."""
    return _load(opts, esc10=True)


def folds(opts: DataOptions) -> list[int]:
    """ESC-50's own five folds."""
    no_num_folds(opts, "ESC-50", len(FOLDS))
    return list(FOLDS)


def folds_esc10(opts: DataOptions) -> list[int]:
    """ESC-10's folds: ESC-50's five."""
    no_num_folds(opts, "ESC-10", len(FOLDS))
    return list(FOLDS)


def _ints(index: Path, line: int, row: dict[str, str]) -> tuple[int, int]:
    try:
        target, fold = int(row["target"]), int(row["fold"])
    except ValueError:
        raise DatasetError(
            f"{index} line {line}: target and fold must be integers, got "
            f"target={row['target']!r}, fold={row['fold']!r}"
        ) from None
    if fold not in FOLDS:
        raise DatasetError(f"{index} line {line}: fold {fold} is not one of 1-5")
    return target, fold


def _is_esc10(row: dict[str, str]) -> bool:
    return row["esc10"].strip().lower() == "true"


def _rows(index: Path, esc10: bool) -> tuple[dict[str, tuple[int, dict[str, str]]], dict[int, str]]:
    """filename -> (fold, row) of the rows to load, and target -> category."""
    lines = list(enumerate(read_csv(index, COLUMNS), start=2))
    if esc10:
        lines = [(n, r) for n, r in lines if _is_esc10(r)]
        if not lines:
            raise DatasetError(f"{index}: no row has esc10 True (ESC-10 is those rows)")
    names: dict[int, str] = {}
    out: dict[str, tuple[int, dict[str, str]]] = {}
    for line, row in lines:
        target, fold = _ints(index, line, row)
        if names.setdefault(target, row["category"]) != row["category"]:
            raise DatasetError(
                f"{index} line {line}: target {target} is {row['category']!r} here but "
                f"{names[target]!r} earlier"
            )
        out[row["filename"]] = (fold, row)
    targets = sorted(names)
    if not esc10 and targets != list(range(len(targets))):
        hint = ""
        if set(targets) <= ESC10_TARGETS or all(_is_esc10(r) for _, r in lines):
            hint = " (these are ESC-10's classes: train them with --dataset esc10)"
        raise DatasetError(f"{index}: targets must be 0..N-1, found {targets}{hint}")
    return out, names


def _load(opts: DataOptions, esc10: bool) -> DatasetSplits:
    root = require_dir(opts.root, "the ESC-50 directory holding meta/esc50.csv and audio/")
    index = root / "meta" / "esc50.csv"
    name = "ESC-10" if esc10 else "ESC-50"  # what messages call the dataset
    no_num_folds(opts, name, len(FOLDS))
    rows, names = _rows(index, esc10)
    targets = sorted(names)  # ESC-10: its targets re-indexed 0..9 in target order
    keys = sorted(rows)
    clips = {k: Clip(root / "audio" / k, targets.index(int(rows[k][1]["target"]))) for k in keys}
    check_files(list(clips.values()), index)
    columns = {c: [rows[k][1][c] for k in keys] for c in COLUMNS}
    grouping = resolve_groups(
        opts.group_by, [clips[k].path for k in keys], root, columns, index, ("src_file",)
    )
    items = [(k, clips[k].label) for k in keys]
    own = {k: rows[k][0] for k in keys}
    split_of, scheme = draw(items, grouping, opts, name, own)
    return DatasetSplits(
        name=name.lower().replace("-", ""),
        labels=[names[t] for t in targets],
        train=[clips[k] for k in keys if split_of[k] == "train"],
        val=[clips[k] for k in keys if split_of[k] == "val"],
        test=[clips[k] for k in keys if split_of[k] == "test"],
        features=FEATURES,
        task=f"environmental sound classification ({name})",
        scheme=scheme,
    )
