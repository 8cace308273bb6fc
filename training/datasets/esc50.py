"""ESC-50 (Piczak, 2015): 2,000 five-second clips, 50 classes, 5 folds.

Layout (github.com/karolpiczak/ESC-50): ``meta/esc50.csv`` with columns
``filename,fold,target,category,esc10,src_file,take`` and ``audio/<filename>``. ``--fold k`` is the
test fold (the papers report the mean over k = 1..5, see ``crossval``); validation is a seeded,
stratified share of the other four folds, so the test fold never selects the best epoch.
"""

from __future__ import annotations

from lookaside.features import FeatureConfig
from training.datasets.base import (
    Clip,
    DatasetError,
    DatasetSplits,
    check_files,
    read_csv,
    require_dir,
    stratified_split,
)
from training.datasets.options import DataOptions

COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
FEATURES = FeatureConfig(target_frames=512)
"""5 s clips: 512 frames (AST's ESC-50 setting), AudioSet mean / std."""
FOLDS = (1, 2, 3, 4, 5)


def load(opts: DataOptions) -> DatasetSplits:
    """ESC-50 with ``opts.fold`` (default 1) as the test fold."""
    root = require_dir(opts.root, "the ESC-50 directory holding meta/esc50.csv and audio/")
    index = root / "meta" / "esc50.csv"
    rows = read_csv(index, COLUMNS)
    test_fold = opts.fold or 1
    if test_fold not in FOLDS:
        raise DatasetError(f"ESC-50 has folds 1-5; --fold {test_fold} does not exist")
    names: dict[int, str] = {}
    clips: dict[str, tuple[Clip, int]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            target, fold = int(row["target"]), int(row["fold"])
        except ValueError:
            raise DatasetError(
                f"{index} line {line}: target and fold must be integers, got "
                f"target={row['target']!r}, fold={row['fold']!r}"
            ) from None
        if fold not in FOLDS:
            raise DatasetError(f"{index} line {line}: fold {fold} is not one of 1-5")
        if names.setdefault(target, row["category"]) != row["category"]:
            raise DatasetError(
                f"{index} line {line}: target {target} is {row['category']!r} here but "
                f"{names[target]!r} earlier"
            )
        clips[row["filename"]] = (Clip(root / "audio" / row["filename"], target), fold)
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{index}: targets must be 0..N-1, found {sorted(names)}")
    check_files([c for c, _ in clips.values()], index)
    rest = [(k, c.label) for k, (c, f) in clips.items() if f != test_fold]
    split = stratified_split(rest, {"val": opts.val_fraction}, opts.seed)
    return DatasetSplits(
        name="esc50",
        labels=[names[i] for i in range(len(names))],
        train=[clips[k][0] for k in sorted(split["train"])],
        val=[clips[k][0] for k in sorted(split["val"])],
        test=[c for k, (c, f) in sorted(clips.items()) if f == test_fold],
        features=FEATURES,
        task="environmental sound classification (ESC-50)",
    )
