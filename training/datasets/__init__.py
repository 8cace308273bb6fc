"""Dataset loaders by name: each reads a public layout into :class:`DatasetSplits`."""

from __future__ import annotations

from collections.abc import Callable

from lookaside.errors import ConfigError
from training.datasets import epic_sounds, esc50, folder, speech_commands
from training.datasets.base import Clip, DatasetError, DatasetSplits
from training.datasets.options import DataOptions

Loader = Callable[[DataOptions], DatasetSplits]

DATASETS: dict[str, Loader] = {
    "esc50": esc50.load,
    "speech_commands": speech_commands.load,
    "epic_sounds": epic_sounds.load,
    "folder": folder.load_folder,
    "csv": folder.load_csv,
}
"""``--dataset`` choices."""

__all__ = ["DATASETS", "Clip", "DataOptions", "DatasetError", "DatasetSplits", "load_dataset"]


def load_dataset(name: str, opts: DataOptions) -> DatasetSplits:
    """Read dataset ``name`` (a key of :data:`DATASETS`)."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}"
        ) from None
    return loader(opts)
