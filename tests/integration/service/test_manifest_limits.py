"""The manifest table through real HTTP (in-process ASGI, lifespan run): every field that sizes
work at an absurd value is refused at upload with 422 and a message naming the field and the
limit; nothing reaches the store (the files on disk and ``GET /adapters`` are unchanged), and the
same adapter with its real manifest is then accepted (so each refusal is the edited field's)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lookaside.backbone import VisionTransformer
from tests.integration.service.svc_support import (
    ADMIN,
    checkpoint_bytes,
    make_checkpoint,
    serve,
    settings,
)

AUTH = {"Authorization": f"Bearer {ADMIN}"}
Edit = Callable[[dict[str, Any]], None]


def features(**changes: object) -> Edit:
    return lambda raw: raw["features"].update(changes)


def backbone_config(**changes: object) -> Edit:
    return lambda raw: raw["backbone"]["config"].update(changes)


def top(key: str, value: object) -> Edit:
    return lambda raw: raw.__setitem__(key, value)


def long_label(raw: dict[str, Any]) -> None:
    raw["labels"][0] = "x" * 10**5


# case -> (edit, substrings of the 422 detail: the field, its value and the limit)
TABLE: dict[str, tuple[Edit, tuple[str, ...]]] = {
    "num_mel_bins 10**6": (
        features(num_mel_bins=10**6),
        ("features.num_mel_bins=1000000", "max_mel_bins=512"),
    ),
    "target_frames 10**9": (
        features(target_frames=10**9),
        ("features.target_frames=1000000000", "max_target_frames=4096"),
    ),
    "sample_rate 1": (
        features(sample_rate=1),
        ("features.sample_rate=1 Hz", "8000..48000 Hz (min_sample_rate..max_sample_rate)"),
    ),
    "max_seconds 1e12": (
        features(max_seconds=1e12),
        ("features.max_seconds=1e+12", "max_clip_seconds=86400"),
    ),
    "hop 1 on 1024 frames": (
        features(target_frames=1024, window_hop_frames=1),
        ("features.window_hop_frames=1", "under 64", "max_window_overlap=16"),
    ),
    "mel bins over the FFT bins": (
        features(num_mel_bins=300),
        ("features.num_mel_bins=300", "over 256, the FFT bins", "sample_rate=16000"),
    ),
    "mel bins under one patch": (
        features(num_mel_bins=4),
        ("features.num_mel_bins=4", "under the backbone's patch size 16"),
    ),
    "std 1e-30": (features(std=1e-30), ("features.std=1e-30", "max_feature_stat")),
    "mean 1e30": (features(mean=1e30), ("features.mean=1e+30", "max_feature_stat")),
    "depth 10**6 in backbone.config": (
        backbone_config(depth=10**6),
        ("backbone.config.depth=1000000", "(this server: 4)"),
    ),
    "embed_dim 2**20 in backbone.config": (
        backbone_config(embed_dim=2**20, num_heads=1),
        ("backbone.config.embed_dim=1048576", "(this server: 64)", "backbone.config.num_heads"),
    ),
    "label of 10**5 chars": (long_label, ("labels at positions [0]", "max_label_chars=256")),
    "task of 10**5 chars": (top("task", "t" * 10**5), ("task is 100000", "max_task_chars=1024")),
    "100 metrics": (
        top("metrics", {f"m{i}": 0.5 for i in range(100)}),
        ("100 metrics", "max_metrics=64"),
    ),
}


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def upload(svc_backbone: VisionTransformer) -> tuple[bytes, bytes]:
    """A real demo adapter (manifest.json, adapter.safetensors) of the served backbone."""
    return checkpoint_bytes(make_checkpoint(svc_backbone, "limits", seed=3))


def test_every_absurd_manifest_field_is_refused_with_422_and_nothing_is_stored(
    tmp_path: Path, svc_backbone: VisionTransformer, upload: tuple[bytes, bytes]
) -> None:
    manifest, weights = upload
    root = tmp_path / "store"

    async def main() -> None:
        cfg = settings(root, warmup=False, max_upload_bytes=2_000_000)
        async with serve(cfg, svc_backbone) as (_, client):
            listing = (await client.get("/adapters")).json()
            before = _tree(root)
            failures = []
            for case, (edit, parts) in TABLE.items():
                raw = json.loads(manifest)
                edit(raw)
                files = {
                    "manifest": ("manifest.json", json.dumps(raw).encode()),
                    "weights": ("adapter.safetensors", weights),
                }
                r = await client.post("/adapters", files=files, headers=AUTH)
                detail = r.json().get("detail", "")
                missing = [p for p in parts if p not in detail]
                if r.status_code != 422 or missing:
                    failures.append((case, r.status_code, missing, detail[:400]))
            assert not failures, failures
            assert _tree(root) == before
            assert (await client.get("/adapters")).json() == listing
            # the same adapter with its real manifest is accepted
            files = {
                "manifest": ("manifest.json", manifest),
                "weights": ("adapter.safetensors", weights),
            }
            ok = await client.post("/adapters", files=files, headers=AUTH)
            assert ok.status_code == 201, ok.text

    asyncio.run(main())
