"""Shared fixtures: tiny backbones with random weights, made in the test (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lookaside.backbone import VisionTransformer
from lookaside.backbones import build_random

_MARKS = {"unit": "unit", "equivalence": "equivalence", "integration": "integration", "e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder (tests/unit -> unit, ...)."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for folder, mark in _MARKS.items():
            if folder in parts:
                item.add_marker(getattr(pytest.mark, mark))


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_backbone() -> VisionTransformer:
    """4-block, width-64 ViT with CLS only (timm test_vit shape)."""
    return build_random("test_vit", seed=1)


@pytest.fixture(scope="session")
def tiny_deit() -> VisionTransformer:
    """4-block, width-64 ViT with CLS + DIST tokens."""
    return build_random("test_deit", seed=2)
