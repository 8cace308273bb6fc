"""A real service for the training tests that talk to one (push, predict --url)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lookaside.backbones import load_backbone
from service.app import create_app
from service.settings import ServiceSettings
from tests.live_server import serve_in_thread

ADMIN_TOKEN = "test-admin-token"


@contextmanager
def serve_store(backbone_file: Path, store: Path) -> Iterator[str]:
    """The real service on ``store`` with the tiny backbone, in a thread; yields its URL."""
    settings = ServiceSettings(  # type: ignore[call-arg]
        _env_file=None,
        backbone=f"file:{backbone_file}",
        device="cpu",
        store=store,
        admin_token=ADMIN_TOKEN,
        max_wait_ms=2.0,
        max_batch_size=8,
        featurize_threads=1,
    )
    app = create_app(settings, backbone=load_backbone(f"file:{backbone_file}"))
    with serve_in_thread(app) as url:
        yield url
