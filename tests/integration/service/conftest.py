"""Fixtures of the service integration tests (helpers in svc_support.py)."""

from __future__ import annotations

import pytest

from lookaside.backbone import VisionTransformer
from tests.integration.service.svc_support import tiny


@pytest.fixture(scope="session")
def svc_backbone() -> VisionTransformer:
    """The tiny backbone the service tests serve (``random:test_vit:1``)."""
    return tiny()
