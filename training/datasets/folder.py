"""Your own clips: a folder per label, or a CSV ``path,label[,start_s,end_s][,split]``.

Folder layout: ``<root>/<label>/<clip>.wav`` (any audio suffix). CSV layout: a header with at
least ``path,label`` (paths relative to the CSV's folder), optionally ``start_s,end_s`` (a
segment of a longer file) and ``split`` (``train``, ``val`` / ``validation``, ``test``). Without a
split, a seeded stratified split is drawn and written beside the checkpoint (``split.csv``, itself
a CSV in this layout) so the run can be reproduced.
"""

from __future__ import annotations

from pathlib import Path

from lookaside.features import FeatureConfig
from training.datasets.base import (
    AUDIO_SUFFIXES,
    Clip,
    DatasetError,
    DatasetSplits,
    check_files,
    read_csv,
    require_dir,
    stratified_split,
)
from training.datasets.options import DataOptions

FEATURES = FeatureConfig(target_frames=1024)
"""Up to 10.24 s per window by default (AST's AudioSet length); set ``--frames`` for your clips."""
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def load_folder(opts: DataOptions) -> DatasetSplits:
    """``<root>/<label>/*.<audio>``; labels sorted by name."""
    root = require_dir(opts.root, "one sub-folder of audio clips per label").resolve()
    labels = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows: list[tuple[Path, str, str | None, float | None, float | None]] = []
    for label in labels:
        files = sorted(p for p in (root / label).iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise DatasetError(
                f"{root / label} holds no audio ({', '.join(AUDIO_SUFFIXES)}); every label "
                "folder needs at least one clip"
            )
        rows += [(p, label, None, None, None) for p in files]
    if len(labels) < 2:
        raise DatasetError(f"{root} needs at least two label folders, found {labels}")
    return _splits("folder", root, rows, opts)


def load_csv(opts: DataOptions) -> DatasetSplits:
    """A CSV index (``opts.root`` is the CSV file)."""
    index = opts.root
    table = read_csv(index, ("path", "label"))
    rows: list[tuple[Path, str, str | None, float | None, float | None]] = []
    for line, row in enumerate(table, start=2):
        if not row["path"] or not row["label"]:
            raise DatasetError(f"{index} line {line}: path and label must not be empty")
        split = row.get("split") or None
        if split is not None and split not in SPLIT_NAMES:
            raise DatasetError(
                f"{index} line {line}: split {split!r} is not one of {', '.join(SPLIT_NAMES)}"
            )
        start, end = row.get("start_s") or None, row.get("end_s") or None
        try:
            start_s = float(start) if start is not None else None
            end_s = float(end) if end is not None else None
        except ValueError:
            raise DatasetError(
                f"{index} line {line}: start_s/end_s must be seconds, got {start!r}, {end!r}"
            ) from None
        if start_s is not None and end_s is not None and not 0 <= start_s < end_s:
            raise DatasetError(f"{index} line {line}: need 0 <= start_s < end_s")
        path = Path(row["path"])
        path = path if path.is_absolute() else index.parent.resolve() / path
        rows.append((path, row["label"], SPLIT_NAMES[split] if split else None, start_s, end_s))
    splits = {r[2] for r in rows}
    if None in splits and len(splits) > 1:
        raise DatasetError(f"{index}: give a split for every row or for none")
    return _splits("csv", index, rows, opts)


def _splits(
    name: str,
    index: Path,
    rows: list[tuple[Path, str, str | None, float | None, float | None]],
    opts: DataOptions,
) -> DatasetSplits:
    labels = sorted({r[1] for r in rows})
    label_of = {label: i for i, label in enumerate(labels)}
    keyed = {f"{r[0]}#{r[3]}-{r[4]}": (Clip(r[0], label_of[r[1]], r[3], r[4]), r[2]) for r in rows}
    check_files([c for c, _ in keyed.values()], index)
    drawn = rows[0][2] is None
    if drawn:
        fractions = {"val": opts.val_fraction, "test": opts.test_fraction}
        assigned = stratified_split(
            [(k, c.label) for k, (c, _) in keyed.items()], fractions, opts.seed
        )
        split_of = {k: s for s, keys in assigned.items() for k in keys}
    else:
        split_of = {k: s or "train" for k, (_, s) in keyed.items()}
    out: dict[str, list[Clip]] = {"train": [], "val": [], "test": []}
    for key in sorted(keyed):
        out[split_of[key]].append(keyed[key][0])
    if not out["train"] or not out["val"]:
        raise DatasetError(
            f"{index}: the split has {len(out['train'])} training and {len(out['val'])} "
            "validation clips; both need at least one (add clips or change --val-fraction)"
        )
    split_rows = None
    if drawn:
        split_rows = [
            (
                str(c.path.resolve()),
                labels[c.label],
                "" if c.start_s is None else repr(c.start_s),
                "" if c.end_s is None else repr(c.end_s),
                s,
            )
            for s in out
            for c in out[s]
        ]
    return DatasetSplits(
        name=name,
        labels=labels,
        train=out["train"],
        val=out["val"],
        test=out["test"],
        features=FEATURES,
        split_rows=split_rows,
    )
