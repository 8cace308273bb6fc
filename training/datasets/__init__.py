"""Dataset loaders by name: each reads a public layout into :class:`DatasetSplits` (audio) or
:class:`AveSplits` (audio-visual, per-second labels)."""

from __future__ import annotations

from collections.abc import Callable

from lookaside.errors import ConfigError
from training.datasets import ave, epic_sounds, esc50, folder, speech_commands
from training.datasets.ave import AveSplits
from training.datasets.base import Clip, DatasetError, DatasetSplits
from training.datasets.options import DataOptions

Loader = Callable[[DataOptions], DatasetSplits | AveSplits]

DATASETS: dict[str, Loader] = {
    "esc50": esc50.load,
    "speech_commands": speech_commands.load,
    "epic_sounds": epic_sounds.load,
    "folder": folder.load_folder,
    "csv": folder.load_csv,
    "ave": ave.load,
}
"""``--dataset`` choices."""
AV_DATASETS = ("ave",)
"""The audio-visual ones (an AV method, frames + spectrogram per second, :class:`AveSplits`)."""

__all__ = [
    "AV_DATASETS",
    "DATASETS",
    "AveSplits",
    "Clip",
    "DataOptions",
    "DatasetError",
    "DatasetSplits",
    "load_dataset",
]


def load_dataset(name: str, opts: DataOptions) -> DatasetSplits | AveSplits:
    """Read dataset ``name`` (a key of :data:`DATASETS`)."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}"
        ) from None
    return loader(opts)
