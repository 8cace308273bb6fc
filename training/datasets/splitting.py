"""Drawn splits: which group each clip belongs to (``--group-by``) and which split it lands in.

A split drawn here never puts one group (a speaker, a source recording) in two splits, and is
stratified by label (:func:`training.datasets.base.assign_groups`). Three ways to choose the test
clips, by layout: the dataset's own folds (ESC-50, a CSV ``fold`` column; ``--fold k``), a drawn
K-fold (``--fold k`` of ``--num-folds``), or a drawn share (``--test-fraction``). Validation is
then drawn, by group, from the clips that are not test.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.datasets.base import (
    DatasetError,
    GroupedItem,
    first_few,
    group_kfold,
    group_split,
)
from training.datasets.options import DataOptions

SPEECH_COMMANDS_NAME = re.compile(r"^([0-9a-f]{8})_nohash_\d+\.\w+$", re.IGNORECASE)
"""Speech Commands file names, ``<speaker hash>_nohash_<n>.wav``: the hash names the speaker."""
NO_GROUPS = "none"
DEFAULT_FOLDS = 5
"""K of a drawn K-fold when ``--num-folds`` is not given."""


def drawn_folds(opts: DataOptions) -> list[int]:
    """The test folds of a K-fold drawn over a layout without folds of its own: 1..K."""
    return list(range(1, (opts.num_folds or DEFAULT_FOLDS) + 1))


def no_num_folds(opts: DataOptions, where: str, n: int) -> None:
    """Refuse ``--num-folds`` on a dataset with its own ``n`` folds (it sizes a drawn K-fold)."""
    if opts.num_folds is not None:
        raise DatasetError(
            f"{where} has its own {n} folds; drop --num-folds {opts.num_folds} (it sizes a K-fold "
            "drawn over a dataset without folds)"
        )


@dataclass(frozen=True)
class Grouping:
    """The group of every clip (None: each clip is its own group) and what the key was."""

    groups: list[str] | None
    key: str


def _column(name: str, values: Sequence[str], index: Path) -> Grouping:
    empty = [str(line) for line, v in enumerate(values, start=2) if not v]
    if empty:
        raise DatasetError(
            f"{index}: column {name!r} (the group of each clip) is empty on lines "
            f"{first_few(empty)}; fill it, or pass --group-by none to split by label only"
        )
    return Grouping(list(values), f"column {name}")


def _regex(pattern: str, relative: Sequence[str], root: Path, columns: Sequence[str]) -> Grouping:
    not_column = f"not a column of the index ({', '.join(columns)}), so " if columns else ""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise DatasetError(
            f"--group-by {pattern!r} is {not_column}read as a regular expression, and it is not a "
            f"valid one: {exc}"
        ) from None
    groups: list[str] = []
    unmatched: list[str] = []
    for path in relative:
        m = rx.search(path)
        value = (m.group(1) if rx.groups else m.group(0)) if m else None
        if not value:
            unmatched.append(path)
        groups.append(value or "")
    if unmatched:
        raise DatasetError(
            f"--group-by {pattern!r} ({not_column}a regular expression over each clip's path "
            f"relative to {root}) matches no group in {len(unmatched)} clips: "
            f"{first_few(unmatched)}; fix the pattern, or pass --group-by none"
        )
    return Grouping(groups, f"regex {pattern}")


def resolve_groups(
    group_by: str | None,
    paths: Sequence[Path],
    root: Path,
    columns: Mapping[str, Sequence[str]],
    index: Path,
    defaults: Sequence[str] = ("speaker",),
) -> Grouping:
    """The group of each clip (``paths[i]``, with the index's ``columns[name][i]``).

    ``group_by``: a column name, else a regular expression searched in the clip's path relative
    to ``root`` (its first group, else the whole match); ``none``: no groups. Default: the first
    of ``defaults`` that is a column, else the speaker hash when every file name is Speech
    Commands-style, else the file when the index cuts several segments from one, else no groups.
    """
    if group_by is not None and group_by.strip().lower() == NO_GROUPS:
        return Grouping(None, NO_GROUPS)
    if group_by is None:
        for name in defaults:
            if name in columns:
                return _column(name, columns[name], index)
        hashes = [SPEECH_COMMANDS_NAME.match(p.name) for p in paths]
        if paths and all(hashes):
            found = [m.group(1).lower() for m in hashes if m]
            return Grouping(found, "speaker hash of Speech Commands file names")
        if len(set(paths)) < len(paths):  # segments of one recording: never in two splits
            return Grouping([p.as_posix() for p in paths], "source file (its segments together)")
        return Grouping(None, NO_GROUPS)
    if group_by in columns:
        return _column(group_by, columns[group_by], index)
    relative = [(p.relative_to(root) if p.is_relative_to(root) else p).as_posix() for p in paths]
    return _regex(group_by, relative, root, list(columns))


def _fix(grouping: Grouping, folds: str = "") -> str:
    what = "each clip is its own group" if grouping.groups is None else f"by {grouping.key}"
    return (
        f"the groups are {what}: {folds}add clips of more groups, choose a finer --group-by, or "
        "split by label only (--group-by none)"
    )


def draw(
    items: Sequence[tuple[str, int]],
    grouping: Grouping,
    opts: DataOptions,
    where: str,
    own_folds: Mapping[str, int] | None = None,
) -> tuple[dict[str, str], dict[str, Any]]:
    """The split (``train``/``val``/``test``) of every key, and how it was drawn.

    ``own_folds`` (key -> fold): the dataset's folds, ``opts.fold`` (default: the first) is test.
    Else ``opts.fold`` is the test fold of a drawn ``opts.num_folds``-fold; else ``test_fraction``.
    """
    groups = grouping.groups or [key for key, _ in items]
    grouped: list[GroupedItem] = [(k, lab, g) for (k, lab), g in zip(items, groups, strict=True)]
    scheme: dict[str, Any] = {"seed": opts.seed, "group_key": grouping.key}
    if own_folds is not None:
        test_keys = _own_fold(own_folds, opts, where, scheme)
    elif opts.fold is not None:
        test_keys = _drawn_fold(grouped, grouping, opts, where, scheme)
    else:
        if opts.num_folds is not None:
            raise DatasetError(
                f"--num-folds {opts.num_folds} needs --fold k (the test fold of the K-fold drawn "
                f"over {where}), or use crossval (every fold)"
            )
        fractions = {"val": opts.val_fraction, "test": opts.test_fraction}
        scheme.update(scheme="drawn split", **{f"{s}_fraction": f for s, f in fractions.items()})
        drawn = group_split(grouped, fractions, opts.seed, _fix(grouping))
        return {k: s for s, keys in drawn.items() for k in keys}, scheme
    rest = [item for item in grouped if item[0] not in test_keys]
    fix = _fix(grouping, "lower --val-fraction's demands or ")
    drawn = group_split(rest, {"val": opts.val_fraction}, opts.seed, fix)
    split_of = dict.fromkeys(test_keys, "test")
    split_of.update({k: s for s, keys in drawn.items() for k in keys})
    scheme["val_fraction"] = opts.val_fraction
    return split_of, scheme


def _own_fold(
    own_folds: Mapping[str, int], opts: DataOptions, where: str, scheme: dict[str, Any]
) -> set[str]:
    folds = sorted(set(own_folds.values()))
    no_num_folds(opts, where, len(folds))
    fold = opts.fold if opts.fold is not None else folds[0]
    if fold not in folds:
        raise DatasetError(f"{where} has folds {folds}; --fold {fold} is not one of them")
    if opts.test_fraction > 0:
        raise DatasetError(
            f"{where} has its own folds: the test split is fold {fold}; --test-fraction "
            f"{opts.test_fraction} would draw a second one, drop it"
        )
    scheme.update(scheme="dataset folds", folds=folds, fold=fold)
    return {k for k, f in own_folds.items() if f == fold}


def _drawn_fold(
    grouped: Sequence[GroupedItem],
    grouping: Grouping,
    opts: DataOptions,
    where: str,
    scheme: dict[str, Any],
) -> set[str]:
    k, fold = opts.num_folds or DEFAULT_FOLDS, opts.fold
    if fold is None or not 1 <= fold <= k:
        raise DatasetError(
            f"--fold {fold} is not a fold of the {k}-fold drawn over {where} (1..{k}); pick one "
            "of them or raise --num-folds"
        )
    if opts.test_fraction > 0:
        raise DatasetError(
            f"--fold {fold} makes the test split fold {fold} of a {k}-fold drawn over {where}; "
            f"--test-fraction {opts.test_fraction} would draw a second test split, drop it"
        )
    n_groups = len({g for _, _, g in grouped})
    fix = _fix(grouping, f"lower --num-folds (at most {n_groups}), ")
    folds = group_kfold(grouped, k, opts.seed, fix)
    scheme.update(scheme="drawn K-fold", k=k, fold=fold)
    return set(folds[fold - 1])


def fixed_split(opts: DataOptions, why: str) -> None:
    """Refuse ``--fold``, ``--num-folds`` and ``--group-by`` on a layout whose split is given
    (``why`` says so)."""
    for option, value in (("--fold", opts.fold), ("--num-folds", opts.num_folds)):
        if value is not None:
            raise DatasetError(
                f"{option} {value} cannot apply: {why}; drop {option} (there are no folds to "
                "choose)"
            )
    if opts.group_by is not None:
        raise DatasetError(
            f"--group-by {opts.group_by} cannot apply: {why}, so no split is drawn to group; "
            "drop --group-by"
        )
