"""Training-only augmentation: SpecAugment and mixup (from :mod:`lookaside.features`, where the
feature code lives) and background-noise mixing for Speech Commands.

SpecAugment and mixup stay defined in :mod:`lookaside.features` (other code uses them there); they
are re-exported here so training code imports all its augmentation from one place.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from lookaside.decode import decode_audio
from lookaside.features import SpecAugment, mixup, to_mono_16k
from training.datasets.base import DatasetError

__all__ = ["BackgroundNoise", "SpecAugment", "mixup"]


class BackgroundNoise:
    """Add a random stretch of a background recording to a waveform (Speech Commands v2).

    Each call mixes, with probability ``p``, a random window of a random noise recording scaled
    by a gain drawn uniformly from ``[0, max_gain]`` (the recipe of the dataset's reference
    training script, ``background_volume`` 0.1, ``background_frequency`` 0.8). Draws come from
    the torch RNG, which DataLoader seeds per worker from the run's seed.

    Args:
        waves: 16 kHz mono noise recordings.
        p: probability that a clip gets noise.
        max_gain: largest noise gain.
    """

    def __init__(self, waves: Sequence[Tensor], p: float = 0.8, max_gain: float = 0.1) -> None:
        if not waves:
            raise DatasetError("background-noise mixing needs at least one noise recording")
        self.waves = list(waves)
        self.p = p
        self.max_gain = max_gain

    @classmethod
    def from_dir(cls, folder: Path, sample_rate: int = 16_000) -> BackgroundNoise:
        """Every ``*.wav`` in ``folder``, decoded once and kept in memory."""
        files = sorted(folder.glob("*.wav"))
        if not files:
            raise DatasetError(f"{folder} has no .wav noise recordings")
        waves = []
        for path in files:
            wave, rate = decode_audio(path.read_bytes(), max_seconds=3600.0)
            waves.append(to_mono_16k(wave, rate, sample_rate))
        return cls(waves)

    def __call__(self, wave: Tensor) -> Tensor:
        if float(torch.rand(())) >= self.p:
            return wave
        noise = self.waves[int(torch.randint(len(self.waves), ()))]
        n = wave.shape[-1]
        if noise.shape[-1] < n:
            noise = noise.repeat(n // noise.shape[-1] + 1)
        start = int(torch.randint(noise.shape[-1] - n + 1, ()))
        gain = float(torch.rand(())) * self.max_gain
        return wave + gain * noise[start : start + n]


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python's RNG from the worker's torch seed."""
    random.seed(torch.initial_seed() % 2**32 + worker_id)
