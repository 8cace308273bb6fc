"""Fixtures of the training tests: a synthetic dataset and a tiny backbone file, made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lookaside.backbones import build_random, save_backbone
from tests.integration.training.synth_data import KINDS, write_clip


@pytest.fixture(scope="session")
def synth_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder-per-label layout: 4 classes x 16 clips of 1.28 s."""
    root = tmp_path_factory.mktemp("synth") / "clips"
    rng = np.random.default_rng(0)
    for kind in KINDS:
        for i in range(16):
            write_clip(root / kind / f"{kind}_{i:02d}.wav", kind, 1.28, rng)
    return root


@pytest.fixture(scope="session")
def backbone_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test_vit backbone saved as safetensors (loaded as ``file:``)."""
    path = tmp_path_factory.mktemp("backbone") / "tiny.safetensors"
    save_backbone(build_random("test_vit", seed=1), path)
    return path
