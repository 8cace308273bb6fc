"""The dataset options every loader accepts (one record, so the CLI builds it once)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataOptions:
    """Where a dataset lives and how to split it."""

    root: Path
    """Dataset directory (or a CSV file for the ``csv`` layout)."""
    fold: int | None = None
    """Test fold: one of the dataset's own (ESC-50: 1-5) or of a drawn K-fold (1..num_folds)."""
    num_folds: int | None = None
    """K of a K-fold drawn over a dataset without folds of its own (None: not given, so
    :data:`training.datasets.splitting.DEFAULT_FOLDS` where a K-fold is drawn)."""
    group_by: str | None = None
    """Group key of drawn splits: a CSV column or a path regex (``None``: the layout's default,
    ``"none"``: by label only); see :class:`training.args.TrainArgs`."""
    seed: int = 0
    """Seed of any split drawn here."""
    val_fraction: float = 0.1
    """Share of the training clips held out for validation when the layout has no val split."""
    test_fraction: float = 0.0
    """Share held out for testing when the layout has no test split (generic layouts)."""
    audio: Path | None = None
    """EPIC-SOUNDS audio: an HDF5 file or a directory of per-video files (default: search)."""
    sample_rate: int = 24_000
    """Sample rate of raw HDF5 audio (EPIC-KITCHENS-100 audio is 24 kHz)."""
