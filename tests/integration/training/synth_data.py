"""Synthetic sound classes for the training tests (tones, chirps, noise bursts, clicks)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16_000


def synth(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One clip of a distinct sound class, with random pitch / timing / level."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    level = rng.uniform(0.3, 0.8)
    if kind == "tone":
        wave = np.sin(2 * math.pi * rng.uniform(300, 600) * t)
    elif kind == "chirp":
        f0, f1 = rng.uniform(200, 400), rng.uniform(3000, 5000)
        wave = np.sin(2 * math.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))
    elif kind == "noise":
        wave = np.zeros(n)
        start = int(rng.uniform(0.1, 0.4) * n)
        wave[start : start + n // 3] = rng.standard_normal(n // 3)[: n - start]
    elif kind == "clicks":
        wave = np.zeros(n)
        period = int(rng.uniform(0.05, 0.12) * RATE)
        wave[rng.integers(0, period) :: period] = 1.0
    else:
        raise ValueError(kind)
    return (level * wave / max(1e-9, np.abs(wave).max())).astype(np.float32)


KINDS = ("tone", "chirp", "noise", "clicks")


def write_clip(path: Path, kind: str, seconds: float, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, synth(kind, seconds, rng), RATE, subtype="PCM_16")


FAST_TRAIN = ["--frames", "64", "--batch-size", "4", "--epochs", "1", "--method", "loaa"]
FAST_TRAIN += ["--rank", "4", "--no-progress"]
"""Options of a training run the integration tests keep short (one epoch, short windows)."""
