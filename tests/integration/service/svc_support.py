"""Helpers of the service tests: tiny adapters in a store, audio clips, an in-process server, and
the independent reference (the library's MultiAdapterModel on one row, no service code)."""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import soundfile as sf
import torch
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from lookaside.adapters.head import HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.backbones import build_random
from lookaside.bank import AdapterBank
from lookaside.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, AdapterCheckpoint
from lookaside.decode import decode_audio
from lookaside.features import FeatureConfig, extract_windows
from lookaside.model import MultiAdapterModel
from service.app import create_app
from service.settings import ServiceSettings

BACKBONE = "random:test_vit:1"
"""The settings string of the tiny backbone (same weights as :func:`tiny`)."""
ADMIN = "test-admin-token"
FEATURES = FeatureConfig(target_frames=128)
"""1.28 s windows: the tiny backbone's native grid (8 x 8 tokens)."""
SHORT_FEATURES = FeatureConfig(target_frames=64)
"""0.64 s windows: a second token grid."""
LABELS = ["dog", "rain", "siren", "bird", "engine"]
METHOD_CONFIGS: dict[str, dict[str, Any]] = {
    "bottleneck": {"rank": 4},
    "lora": {"rank": 2, "alpha": 4.0},
    "loaa": {"rank": 4, "kernels": {"attn": "T", "ffn": "F"}},
    "linear": {},
    "soft_moa": {"num_experts": 3, "rank": 1},
    "prompt": {"num_tokens": 2},
    "convpass": {"rank": 4},
    "aat": {"rank": 4},
}


def tiny() -> VisionTransformer:
    """The backbone :data:`BACKBONE` names."""
    return build_random("test_vit", seed=1)


def make_checkpoint(
    backbone: VisionTransformer,
    name: str,
    *,
    method: str = "bottleneck",
    config: dict[str, Any] | None = None,
    labels: Sequence[str] = LABELS,
    features: FeatureConfig = FEATURES,
    seed: int = 0,
    task_type: Literal["multiclass", "multilabel"] = "multiclass",
    version: int = 1,
) -> AdapterCheckpoint:
    """An adapter with non-zero random weights drawn from ``seed`` (fresh up-projections are
    zero, which would hide routing bugs)."""
    cfg = METHOD_CONFIGS[method] if config is None else config
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    head = HeadConfig(num_classes=len(labels), multi_label=task_type == "multilabel")
    bank.add("x@1", method, cfg, head, seed=seed)
    ckpt = AdapterCheckpoint.from_bank(
        bank,
        "x@1",
        name=name,
        version=version,
        task="test",
        task_type=task_type,
        labels=list(labels),
        features=features,
        backbone=backbone,
    )
    gen = torch.Generator().manual_seed(1000 + seed)
    ckpt.tensors = {
        k: torch.randn(v.shape, generator=gen) * 0.3 for k, v in sorted(ckpt.tensors.items())
    }
    return ckpt


def checkpoint_bytes(ckpt: AdapterCheckpoint) -> tuple[bytes, bytes]:
    """(manifest.json, adapter.safetensors) as an upload sends them."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt.save(Path(tmp) / "a")
        return (Path(tmp) / "a" / MANIFEST_FILE).read_bytes(), (
            Path(tmp) / "a" / WEIGHTS_FILE
        ).read_bytes()


def put_in_store(root: Path, ckpt: AdapterCheckpoint, *, activate: bool = True) -> None:
    """Write ``ckpt`` at ``<root>/<name>/<version>`` (the store's layout) and point ACTIVE at it."""
    m = ckpt.manifest
    ckpt.save(root / m.name / str(m.version))
    last = root / m.name / "LAST"
    old = int(last.read_text()) if last.exists() else 0
    last.write_text(f"{max(old, m.version)}\n")
    if activate:
        (root / m.name / "ACTIVE").write_text(f"{m.version}\n")


def settings(store: Path, **overrides: Any) -> ServiceSettings:
    base: dict[str, Any] = {
        "backbone": BACKBONE,
        "device": "cpu",
        "store": store,
        "admin_token": ADMIN,
        "max_wait_ms": 2.0,
        "max_batch_size": 8,
        "featurize_threads": 2,
        "request_timeout_s": 60.0,
        "metrics_max_age_s": 0.0,  # tests read counters right after the requests they count
    }
    base.update(overrides)
    return ServiceSettings(_env_file=None, **base)  # type: ignore[call-arg]


@asynccontextmanager
async def serve(
    cfg: ServiceSettings, backbone: VisionTransformer | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app in-process (lifespan run), and a real HTTP client over ASGI."""
    app = create_app(cfg, backbone=backbone)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=120) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=120
        ) as client:
            yield app, client


# -- audio ------------------------------------------------------------------------------------
def tone(seconds: float, rate: int = 16_000, channels: int = 1, seed: int = 0) -> np.ndarray:
    """``[samples, channels]`` float32: a chirp plus noise (distinct per seed)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    freq = 200 + 150 * seed
    base = 0.3 * np.sin(2 * np.pi * (freq + 300 * t) * t) + 0.05 * rng.standard_normal(t.size)
    out = np.stack([base * (1.0 - 0.2 * c) for c in range(channels)], axis=1)
    return out.astype(np.float32)


def encode(
    seconds: float,
    *,
    rate: int = 16_000,
    channels: int = 1,
    fmt: str = "WAV",
    subtype: str | None = None,
    seed: int = 0,
) -> bytes:
    """A clip encoded by soundfile (WAV, FLAC, OGG, MP3)."""
    buf = io.BytesIO()
    sf.write(buf, tone(seconds, rate, channels, seed), rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def mp4_with_audio(seconds: float, rate: int = 44_100, seed: int = 0) -> bytes:
    """An MP4 with a tiny video track and an AAC sound track (PyAV)."""
    import av

    buf = io.BytesIO()
    samples = tone(seconds, rate, 1, seed)[:, 0]
    with av.open(buf, mode="w", format="mp4") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for i in range(int(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(
                np.full((32, 32, 3), i * 10 % 255, dtype=np.uint8), format="rgb24"
            )
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        chunk = 1024
        for start in range(0, samples.size, chunk):
            piece = samples[start : start + chunk][None, :]
            frame = av.AudioFrame.from_ndarray(piece, format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return buf.getvalue()


# -- the independent reference ----------------------------------------------------------------
def reference_scores(
    backbone: VisionTransformer, ckpt: AdapterCheckpoint, clip: bytes
) -> torch.Tensor:
    """``[windows, classes]`` scores of ``clip`` through ``ckpt`` alone: decode, features and one
    row per forward with the library only (no service code)."""
    wave, rate = decode_audio(clip)
    windows = extract_windows(wave, rate, ckpt.manifest.features).features
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    ckpt.load_into(bank, "ref")
    model = MultiAdapterModel(backbone, bank).eval()
    rows = []
    with torch.inference_mode():
        for w in windows:
            (logits,) = model(w[None], ["ref"])
            assert logits is not None
            rows.append(logits.float())
    out = torch.stack(rows)
    if ckpt.manifest.task_type == "multilabel":
        return torch.sigmoid(out)
    return torch.softmax(out, dim=-1)


def scores_by_label(labels: list[dict[str, Any]]) -> dict[str, float]:
    return {item["label"]: item["score"] for item in labels}


def expected_top(scores: torch.Tensor, labels: Sequence[str], k: int) -> dict[str, float]:
    """Top-k of the clip (mean of window scores) as {label: score}."""
    clip = scores.mean(dim=0)
    values, index = torch.topk(clip, min(k, len(labels)))
    return {labels[int(i)]: float(v) for v, i in zip(values, index, strict=True)}


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1)
