"""Your own clips: a folder per label, or a CSV ``path,label[,start_s,end_s][,split|fold]``.

Folder layout: ``<root>/<label>/<clip>.wav`` (any audio suffix). CSV layout: a header with at
least ``path,label`` (paths relative to the CSV's folder), optionally ``start_s,end_s`` (a
segment of a longer file), ``split`` (``train``, ``val`` / ``validation``, ``test``: the split is
given) or ``fold`` (integers: the dataset's own folds, ``--fold k`` is test), and any other
columns (a ``speaker`` column groups the drawn splits by default). Without a split, a seeded split
is drawn by group and label (:mod:`training.datasets.splitting`) and written beside the checkpoint
(``split.csv``, itself a CSV in this layout, with a ``group`` column when grouped) so the run can
be reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lookaside.features import FeatureConfig
from training.datasets.base import (
    AUDIO_SUFFIXES,
    Clip,
    DatasetError,
    DatasetSplits,
    check_files,
    read_csv,
    require_dir,
)
from training.datasets.options import DataOptions
from training.datasets.splitting import (
    Grouping,
    draw,
    drawn_folds,
    fixed_split,
    no_num_folds,
    resolve_groups,
)

FEATURES = FeatureConfig(target_frames=1024)
"""Up to 10.24 s per window by default (AST's AudioSet length); set ``--frames`` for your clips."""
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Row:
    """One clip of an index."""

    path: Path
    label: str
    split: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    fold: int | None = None

    @property
    def key(self) -> str:
        return f"{self.path}#{self.start_s}-{self.end_s}"


@dataclass(frozen=True)
class Index:
    """A layout's clips, the file (or folder) listing them, and the index's other columns."""

    name: str
    where: Path
    root: Path
    """Clip paths are relative to it (what ``--group-by`` regexes see)."""
    rows: list[Row]
    columns: dict[str, list[str]] = field(default_factory=dict)


def load_folder(opts: DataOptions) -> DatasetSplits:
    """``<root>/<label>/*.<audio>``; labels sorted by name."""
    root = require_dir(opts.root, "one sub-folder of audio clips per label").resolve()
    labels = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows: list[Row] = []
    for label in labels:
        files = sorted(p for p in (root / label).iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise DatasetError(
                f"{root / label} holds no audio ({', '.join(AUDIO_SUFFIXES)}); every label "
                "folder needs at least one clip"
            )
        rows += [Row(p, label) for p in files]
    if len(labels) < 2:
        raise DatasetError(f"{root} needs at least two label folders, found {labels}")
    return _splits(Index("folder", root, root, rows), opts)


def load_csv(opts: DataOptions) -> DatasetSplits:
    """A CSV index (``opts.root`` is the CSV file)."""
    index = opts.root
    table = read_csv(index, ("path", "label"))
    rows = [_row(index, line, row) for line, row in enumerate(table, start=2)]
    splits = {r.split for r in rows}
    if None in splits and len(splits) > 1:
        raise DatasetError(f"{index}: give a split for every row or for none")
    if rows[0].split is None and "fold" in table[0]:
        rows = [
            replace(r, fold=_fold_of(index, line, row))
            for line, (r, row) in enumerate(zip(rows, table, strict=True), start=2)
        ]
    columns = {c: [row[c] for row in table] for c in table[0] if c not in ("path", "label")}
    return _splits(Index("csv", index, index.parent.resolve(), rows, columns), opts)


def csv_folds(opts: DataOptions) -> list[int]:
    """The test folds ``crossval`` runs over a CSV (reads the index only)."""
    table = read_csv(opts.root, ("path", "label"))
    if any(row.get("split") for row in table):
        raise DatasetError(
            f"cannot cross-validate {opts.root}: its split column fixes the test split; drop the "
            "column to draw folds, or add a fold column"
        )
    if "fold" in table[0]:
        folds = sorted({_fold_of(opts.root, n, row) for n, row in enumerate(table, start=2)})
        no_num_folds(opts, f"{opts.root} (its fold column)", len(folds))
        return folds
    return drawn_folds(opts)


def folder_folds(opts: DataOptions) -> list[int]:
    """The drawn K-fold's test folds (1..``--num-folds``, default 5)."""
    return drawn_folds(opts)


def _row(index: Path, line: int, row: dict[str, str]) -> Row:
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
    return Row(path, row["label"], SPLIT_NAMES[split] if split else None, start_s, end_s)


def _fold_of(index: Path, line: int, row: dict[str, str]) -> int:
    """A row's ``fold`` cell (the dataset's own folds: integers)."""
    try:
        return int(row["fold"])
    except ValueError:
        raise DatasetError(
            f"{index} line {line}: fold must be an integer (the dataset's own folds), got "
            f"{row['fold']!r}"
        ) from None


def _draw(
    ix: Index, rows: list[Row], clips: list[Clip], opts: DataOptions
) -> tuple[dict[str, str], Grouping, dict[str, Any]]:
    """Each clip's drawn split, its grouping and how it was drawn."""
    grouping = resolve_groups(opts.group_by, [r.path for r in rows], ix.root, ix.columns, ix.where)
    own = None
    if rows[0].fold is not None:
        own = {r.key: r.fold or 0 for r in rows}
    where = f"{ix.where} (its fold column)" if own is not None else str(ix.where)
    items = [(r.key, c.label) for r, c in zip(rows, clips, strict=True)]
    split_of, scheme = draw(items, grouping, opts, where, own)
    return split_of, grouping, scheme


def _splits(ix: Index, opts: DataOptions) -> DatasetSplits:
    last = {r.key: i for i, r in enumerate(ix.rows)}  # a row listed twice counts once
    keep = sorted(last.values())
    rows = [ix.rows[i] for i in keep]
    ix = replace(ix, columns={c: [v[i] for i in keep] for c, v in ix.columns.items()})
    labels = sorted({r.label for r in rows})
    label_of = {label: i for i, label in enumerate(labels)}
    clips = [Clip(r.path, label_of[r.label], r.start_s, r.end_s) for r in rows]
    check_files(clips, ix.where)
    grouping: Grouping | None = None
    if rows[0].split is not None:
        fixed_split(opts, f"{ix.where} gives the split (its split column)")
        split_of, scheme = {r.key: r.split or "train" for r in rows}, {"scheme": "given split"}
    else:
        split_of, grouping, scheme = _draw(ix, rows, clips, opts)
    order = sorted(range(len(rows)), key=lambda i: rows[i].key)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i in order:
        out[split_of[rows[i].key]].append(i)
    if not out["train"] or not out["val"]:
        raise DatasetError(
            f"{ix.where}: the split has {len(out['train'])} training and {len(out['val'])} "
            "validation clips; both need at least one (add clips or change --val-fraction)"
        )
    untrained = sorted(set(labels) - {labels[clips[i].label] for i in out["train"]})
    if grouping is not None and untrained:
        key = "each clip" if grouping.groups is None else grouping.key
        raise DatasetError(
            f"{ix.where}: the drawn split leaves no training clips for {untrained} (groups by "
            f"{key} are kept whole, and these labels have too few of them); add clips of more "
            "groups, lower --val-fraction / --test-fraction, or split by label only "
            "(--group-by none)"
        )
    return DatasetSplits(
        name=ix.name,
        labels=labels,
        train=[clips[i] for i in out["train"]],
        val=[clips[i] for i in out["val"]],
        test=[clips[i] for i in out["test"]],
        features=FEATURES,
        split_rows=None if grouping is None else _split_rows(rows, labels, out, grouping),
        scheme=scheme,
    )


def _split_rows(
    rows: list[Row], labels: list[str], out: dict[str, list[int]], grouping: Grouping
) -> list[tuple[str, ...]]:
    """``split.csv``'s rows: the drawn split of every clip (and its group, when grouped)."""
    table: list[tuple[str, ...]] = []
    for split, members in out.items():
        for i in members:
            r = rows[i]
            cells = (
                str(r.path.resolve()),
                r.label,
                "" if r.start_s is None else repr(r.start_s),
                "" if r.end_s is None else repr(r.end_s),
                split,
            )
            table.append(cells if grouping.groups is None else (*cells, grouping.groups[i]))
    return table
