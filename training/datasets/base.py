"""What every dataset loader returns: clips (where the audio is, which label), splits, labels.

A loader only reads the dataset's index (CSV, lists, folders) and checks it against the files on
disk; audio is read later, clip by clip, by :mod:`training.cache` (which decodes each clip once).
Malformed datasets raise :class:`DatasetError` naming the file and what was expected.
"""

from __future__ import annotations

import csv
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookaside.errors import ConfigError
from lookaside.features import FeatureConfig

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".aiff", ".aif", ".opus")


class DatasetError(ConfigError):
    """A dataset is missing, malformed or does not match its documented layout."""


@dataclass(frozen=True)
class Clip:
    """One training example: a whole file, a time segment of one, or an HDF5 sample range."""

    path: Path
    """Audio file (or HDF5 file when ``h5_key`` is set)."""
    label: int
    """Class index into :attr:`DatasetSplits.labels`."""
    start_s: float | None = None
    """Segment start in seconds (None: the whole file)."""
    end_s: float | None = None
    """Segment end in seconds."""
    h5_key: str | None = None
    """Dataset name inside the HDF5 file (EPIC-SOUNDS: the video id)."""
    start_sample: int | None = None
    """First sample of an HDF5 segment."""
    stop_sample: int | None = None
    """One past the last sample of an HDF5 segment."""
    sample_rate: int | None = None
    """Sample rate of HDF5 audio (raw arrays carry none)."""


@dataclass
class DatasetSplits:
    """A dataset ready for training: labelled clips per split and its feature defaults."""

    name: str
    """Dataset name (``esc50``, ``speech_commands``, ``epic_sounds``, ``folder``, ``csv``)."""
    labels: list[str]
    """Class names in logit order."""
    train: list[Clip]
    """Clips the adapter is trained on."""
    val: list[Clip]
    """Clips used to pick the best epoch."""
    test: list[Clip] = field(default_factory=list)
    """Held-out clips, evaluated once at the end (may be empty)."""
    features: FeatureConfig = field(default_factory=FeatureConfig)
    """Feature defaults for this dataset (frames per window, mean / std)."""
    task: str = "audio classification"
    """Free-text task, recorded in the manifest."""
    report_map: bool = False
    """Also report mAP (EPIC-SOUNDS does)."""
    noise_dir: Path | None = None
    """Background-noise recordings mixed into training clips (Speech Commands)."""
    split_rows: list[tuple[str, ...]] | None = None
    """``(path, label, start_s, end_s, split[, group])`` of a split drawn here (none was given):
    written beside the checkpoint as ``split.csv``, itself a loadable CSV dataset, so the run can
    be reproduced."""
    scheme: dict[str, Any] = field(default_factory=dict)
    """How the test and validation clips were chosen (``crossval`` records it): e.g.
    ``{"scheme": "drawn K-fold", "k": 5, "fold": 2, "seed": 0, "group_key": "..."}``."""

    def split(self, name: str) -> list[Clip]:
        """Clips of ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise ConfigError(f"unknown split {name!r}; choose train, val or test")
        clips: list[Clip] = getattr(self, name)
        return clips


SPLIT_COLUMNS = ("path", "label", "start_s", "end_s", "split", "group")
"""``split.csv``'s header; ``group`` only when the split was drawn by group."""


def write_split_csv(rows: Sequence[Sequence[str]] | None, path: Path) -> None:
    """``split.csv`` of a split drawn here (``rows`` None: the dataset gave its own split)."""
    if rows is None:
        return
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SPLIT_COLUMNS[: len(rows[0]) if rows else 5])
        writer.writerows(rows)


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else a :class:`DatasetError` saying what belongs there."""
    if not path.is_dir():
        raise DatasetError(f"{path} does not exist or is not a directory; expected {what}")
    return path


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a :class:`DatasetError` saying what it should hold."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing; expected {what}")
    return path


def read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV with a header that must contain ``required`` columns."""
    require_file(path, f"a CSV with columns {', '.join(required)}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetError(
                f"{path} lacks columns {missing}; expected a header with {', '.join(required)} "
                f"(found {', '.join(header) or 'no header'})"
            )
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    if not rows:
        raise DatasetError(f"{path} has a header but no rows")
    return rows


def first_few(names: Sequence[str], shown: int = 5) -> str:
    """``a, b, c, d, e and 7 more``: the first names of a list an error is about."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def check_files(clips: Sequence[Clip], index: Path) -> None:
    """Every clip's file exists; else one error naming the index and the first missing files."""
    missing = sorted({str(c.path) for c in clips if not c.path.is_file()})
    if missing:
        raise DatasetError(
            f"{index} lists {len(missing)} audio files that do not exist: {first_few(missing)}"
        )


def stratified_split(
    items: Sequence[tuple[str, int]], fractions: dict[str, float], seed: int
) -> dict[str, list[str]]:
    """Assign keys to splits per class in the given proportions (seeded, reproducible).

    Args:
        items: ``(key, label)`` pairs.
        fractions: e.g. ``{"val": 0.2, "test": 0.0}``; the rest goes to ``train``.
        seed: shuffles each class's keys.
    """
    by_label: dict[int, list[str]] = defaultdict(list)
    for key, label in items:
        by_label[label].append(key)
    rng = random.Random(seed)
    out: dict[str, list[str]] = {"train": [], **{name: [] for name in fractions}}
    for label in sorted(by_label):
        keys = sorted(by_label[label])
        rng.shuffle(keys)
        start = 0
        for name, frac in fractions.items():
            n = round(frac * len(keys))
            if frac > 0 and n == 0 and len(keys) - start > 1:
                n = 1  # every class appears in every requested split when it can
            out[name] += keys[start : start + n]
            start += n
        out["train"] += keys[start:]
    return out


GroupedItem = tuple[str, int, str]
"""``(key, label, group)`` of one clip: clips sharing a group always land in the same split."""


def assign_groups(
    items: Sequence[GroupedItem], shares: dict[str, float], seed: int, fix: str
) -> dict[str, list[str]]:
    """Whole groups to bins of the given shares, stratified by label (seeded, reproducible).

    Groups are shuffled by ``seed`` and taken largest first; each goes to the bin whose label
    counts it brings closest to the bin's targets (``share x clips of the label``), measured as the
    rise of the chi-square distance ``sum (have - target)^2 / target``; ties go to the bin least
    full. Every bin with a positive share gets at least one group (the last groups are kept for
    bins still empty), else a :class:`DatasetError` says how many groups there are and ``fix``.
    """
    members: dict[str, Counter[int]] = defaultdict(Counter)
    for _, label, group in items:
        members[group][label] += 1
    bins = [b for b, w in shares.items() if w > 0]
    if len(members) < len(bins):
        raise DatasetError(
            f"{len(members)} groups cannot fill {len(bins)} disjoint splits ({', '.join(bins)}) "
            f"without a group in two of them; {fix}"
        )
    n_label = Counter(label for _, label, _ in items)
    total = sum(n_label.values())
    target = {b: {lab: shares[b] * n for lab, n in n_label.items()} for b in bins}
    have: dict[str, Counter[int]] = {b: Counter() for b in bins}
    filled = dict.fromkeys(bins, 0)
    order = sorted(members)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda g: -sum(members[g].values()))  # stable: the shuffle breaks ties
    bin_of: dict[str, str] = {}
    for i, group in enumerate(order):
        empty = [b for b in bins if not filled[b]]
        counts = members[group]

        def cost(b: str, counts: Counter[int] = counts) -> tuple[float, float, int]:
            rise = sum(
                c * (2 * (have[b][lab] - target[b][lab]) + c) / target[b][lab]
                for lab, c in counts.items()
            )
            return rise, filled[b] / (shares[b] * total), bins.index(b)

        best = min(empty if len(order) - i <= len(empty) else bins, key=cost)
        bin_of[group] = best
        have[best].update(counts)
        filled[best] += sum(counts.values())
    out: dict[str, list[str]] = {b: [] for b in shares}
    for key, _, group in items:
        out[bin_of[group]].append(key)
    return out


def group_split(
    items: Sequence[GroupedItem], fractions: dict[str, float], seed: int, fix: str
) -> dict[str, list[str]]:
    """``train`` and the ``fractions`` splits, no group in two of them. Where every clip is its
    own group this is :func:`stratified_split` exactly (so ungrouped splits keep their seeds)."""
    if len({g for _, _, g in items}) == len(items):
        return stratified_split([(k, lab) for k, lab, _ in items], fractions, seed)
    rest = 1.0 - sum(fractions.values())
    return assign_groups(items, {"train": rest, **fractions}, seed, fix)


def group_kfold(items: Sequence[GroupedItem], k: int, seed: int, fix: str) -> list[list[str]]:
    """``k`` test folds (keys), stratified by label, no group in two folds (seeded)."""
    folds = assign_groups(items, {str(i): 1.0 / k for i in range(1, k + 1)}, seed, fix)
    return [folds[str(i)] for i in range(1, k + 1)]
