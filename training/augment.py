"""Training-only augmentation: SpecAugment, mixup and background-noise mixing (Speech Commands).

They act on the ``[frames, mel]`` fbank of :mod:`lookaside.features` (or a waveform), but serving
never augments, so they live here rather than in the library.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import Tensor, nn

from lookaside.decode import decode_audio
from lookaside.errors import ConfigError
from lookaside.features import to_mono_16k
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


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al., 2019; AST trains with it) on ``[frames, mel]`` or
    ``[B, frames, mel]``, each example with its own masks. Identity in eval mode.

    Masks are the torchaudio ``FrequencyMasking``/``TimeMasking`` draws (width uniform in
    ``[0, width)``, position uniform), applied through the function both transforms call so a
    width larger than the input is capped at its length instead of piling masks onto its start.

    Args:
        freq_mask: largest frequency mask, in mel bins (AST: 48).
        time_mask: largest time mask, in frames (AST: 192 for AudioSet, 96 for ESC-50).
        num_freq_masks: frequency masks per example.
        num_time_masks: time masks per example.
        mask_value: value written into masks; 0 is the mean of normalised features.
    """

    def __init__(
        self,
        freq_mask: int = 48,
        time_mask: int = 192,
        num_freq_masks: int = 1,
        num_time_masks: int = 1,
        mask_value: float = 0.0,
    ) -> None:
        super().__init__()
        if min(freq_mask, time_mask, num_freq_masks, num_time_masks) < 0:
            raise ConfigError("SpecAugment mask widths and counts must be >= 0")
        self.freq_mask = freq_mask
        self.time_mask = time_mask
        self.num_freq_masks = num_freq_masks
        self.num_time_masks = num_time_masks
        self.mask_value = mask_value

    def forward(self, spec: Tensor) -> Tensor:
        if not self.training:
            return spec
        if spec.dim() not in (2, 3):
            raise ConfigError(
                f"SpecAugment takes [frames, mel] or [B, frames, mel], got {spec.dim()}-D"
            )
        dtype = spec.dtype
        # torchaudio masks (..., freq, time); float32 so mask positions above 256 are exact.
        x = (spec if spec.dim() == 3 else spec.unsqueeze(0)).transpose(1, 2).float()
        masks = [(1, self.freq_mask)] * self.num_freq_masks + [(2, self.time_mask)] * (
            self.num_time_masks
        )
        for axis, width in masks:
            x = torchaudio.functional.mask_along_axis_iid(
                x, min(width, x.shape[axis]), self.mask_value, axis
            )
        out = x.transpose(1, 2).to(dtype)
        return out if spec.dim() == 3 else out.squeeze(0)

    def extra_repr(self) -> str:
        return (
            f"freq_mask={self.freq_mask}x{self.num_freq_masks}, "
            f"time_mask={self.time_mask}x{self.num_time_masks}, mask_value={self.mask_value}"
        )


def mixup(
    x: Tensor, y_onehot: Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, float]:
    """Mix each example with a random partner (Zhang et al., 2018; used by AST).

    Returns ``(lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm], lam)`` with
    ``lam ~ Beta(alpha, alpha)`` and ``perm`` a random permutation of the batch.

    Args:
        x: ``[B, ...]`` inputs.
        y_onehot: ``[B, classes]`` one-hot or soft targets, mixed with the same ``lam`` and pairs.
        alpha: Beta parameter; ``alpha <= 0`` returns the inputs unchanged with ``lam = 1``.
        generator: makes the draw reproducible; the global torch RNG when None.
    """
    if x.shape[0] != y_onehot.shape[0]:
        raise ConfigError(f"batch sizes differ: x {x.shape[0]}, y_onehot {y_onehot.shape[0]}")
    if alpha <= 0:
        return x, y_onehot, 1.0
    # torch's Beta takes no generator: seed numpy's from it so one generator drives the whole draw.
    seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    x_mixed = lam * x + (1 - lam) * x[perm]
    y_mixed = lam * y_onehot + (1 - lam) * y_onehot[perm.to(y_onehot.device)]
    return x_mixed, y_mixed, lam
