"""Clips -> batches: a torch Dataset over the feature cache and the DataLoader settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from lookaside.features import FeatureConfig, fbank, normalise, pad_or_crop
from training.augment import BackgroundNoise, seed_worker
from training.cache import FeatureCache
from training.datasets.base import Clip


class ClipDataset(Dataset[tuple[Tensor, int]]):
    """``(normalised [frames, mel] features, label)`` per clip, read through the cache.

    With ``noise`` the cache holds waveforms and the fbank is computed after mixing (training
    split of Speech Commands); otherwise the cached fbank is only normalised.
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        cfg: FeatureConfig,
        cache: FeatureCache,
        noise: BackgroundNoise | None = None,
    ) -> None:
        self.clips = list(clips)
        self.cfg = cfg
        self.cache = cache
        self.noise = noise

    def __len__(self) -> int:
        return len(self.clips)

    def raw(self, index: int) -> Tensor:
        """Unnormalised fbank (statistics are measured on these)."""
        clip = self.clips[index]
        if self.noise is None:
            return self.cache.fbank(clip)
        wave = self.noise(self.cache.wave(clip))
        fb = fbank(wave, self.cfg.num_mel_bins, self.cfg.sample_rate)
        return pad_or_crop(fb, self.cfg.target_frames)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return normalise(self.raw(index), self.cfg.mean, self.cfg.std), self.clips[index].label


def make_loader(
    dataset: Dataset[tuple[Tensor, int]],
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    workers: int,
    pin_memory: bool,
    sampler: Sampler[Any] | None = None,
) -> DataLoader[tuple[Tensor, int]]:
    """A DataLoader with seeded shuffling, persistent workers and pinned memory (CUDA).

    ``persistent_workers`` keeps each worker's content-hash memo alive across epochs, so cached
    epochs only read ``.npy`` files.
    """
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=seed_worker if workers > 0 else None,
        generator=generator,
        drop_last=False,
    )
