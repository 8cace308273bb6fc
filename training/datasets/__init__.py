"""Dataset loaders by name: each reads a public layout into :class:`DatasetSplits` (audio clips)
or :class:`AveSplits` (audio-visual videos, per-second labels) and declares the task kind it
trains (a name in :data:`lookaside.tasks.TASKS`), so training asks the kind, not the dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from lookaside.errors import ConfigError
from training.datasets import ave, epic_sounds, esc50, folder, speech_commands
from training.datasets.ave import AveSplits
from training.datasets.base import Clip, DatasetError, DatasetSplits
from training.datasets.options import DataOptions

Splits = DatasetSplits | AveSplits
"""What a loader returns; the dataset's task kind knows which."""
Loader = Callable[[DataOptions], Splits]


Folds = Callable[[DataOptions], list[int]]


class DatasetEntry(NamedTuple):
    """One ``--dataset`` choice: its loader, its test folds and the task kind it trains."""

    load: Loader
    folds: Folds
    """The folds ``crossval`` runs (the dataset's own, or 1..K of a drawn K-fold); raises a
    :class:`DatasetError` with the reason where the layout fixes its test split."""
    task: str = "clip"


DATASETS: dict[str, DatasetEntry] = {
    "esc50": DatasetEntry(esc50.load, esc50.folds),
    "esc10": DatasetEntry(esc50.load_esc10, esc50.folds_esc10),
    "speech_commands": DatasetEntry(speech_commands.load, speech_commands.folds),
    "epic_sounds": DatasetEntry(epic_sounds.load, epic_sounds.folds),
    "folder": DatasetEntry(folder.load_folder, folder.folder_folds),
    "csv": DatasetEntry(folder.load_csv, folder.csv_folds),
    "ave": DatasetEntry(ave.load, ave.folds, task="av_events"),
}
"""``--dataset`` choices."""

__all__ = [
    "DATASETS",
    "AveSplits",
    "Clip",
    "DataOptions",
    "DatasetEntry",
    "DatasetError",
    "DatasetSplits",
    "Splits",
    "cv_folds",
    "dataset_entry",
    "datasets_of",
    "load_dataset",
]


def dataset_entry(name: str) -> DatasetEntry:
    """The registered dataset ``name`` (a key of :data:`DATASETS`)."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}"
        ) from None


def datasets_of(task: str) -> list[str]:
    """The datasets that train task kind ``task``."""
    return [name for name, entry in DATASETS.items() if entry.task == task]


def load_dataset(name: str, opts: DataOptions) -> Splits:
    """Read dataset ``name`` (a key of :data:`DATASETS`)."""
    return dataset_entry(name).load(opts)


def cv_folds(name: str, opts: DataOptions) -> list[int]:
    """The test folds of dataset ``name`` for ``crossval`` (reads its index at most, no audio);
    a :class:`DatasetError` with the reason where it cannot be cross-validated."""
    return dataset_entry(name).folds(opts)
