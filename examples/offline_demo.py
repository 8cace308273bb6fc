"""Offline end-to-end demo of what Lookaside does, on this machine, with no downloads.

    python -m examples.offline_demo   # (make demo) random-weight tiny backbone, ~30 s on 2 CPUs
    LOOKASIDE_BACKBONE=timm:vit_base_patch16_224.augreg_in21k python -m examples.offline_demo

1. Synthesise two labelled tasks as 44.1 kHz stereo WAV files: "sound type" (tone / noise /
   chirp) and "pitch" (low / high tone).
2. Decode and featurise them exactly as a server would (16 kHz mono, AST log-mel fbank).
3. Train a LoAA adapter for the first task and a Soft-MoA adapter for the second on one frozen
   backbone (the backbone's weights never change; only adapter and head parameters train).
4. Save both as checkpoints (manifest.json + adapter.safetensors), load them into a fresh adapter
   bank, and classify held-out clips of both tasks in ONE mixed batch: every row gets its own
   adapter inside a single backbone pass.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lookaside.adapters import HeadConfig
from lookaside.adapters.bank import AdapterBank
from lookaside.backbone import VisionTransformer
from lookaside.backbones import load_backbone
from lookaside.checkpoint import AdapterCheckpoint, load_checkpoint
from lookaside.decode import decode_audio
from lookaside.features import FeatureConfig, extract
from lookaside.model import MultiAdapterModel

SOURCE_RATE = 44_100
SECONDS = 1.0
FEATURES = FeatureConfig(target_frames=100)  # 1 s clips: 100 frames -> an 8 x 6 token grid


@dataclass(frozen=True)
class Task:
    """One demo task: its adapter, labels and a clip generator."""

    name: str
    description: str
    method: str
    config: dict[str, object]
    labels: tuple[str, ...]


TASKS = (
    Task(
        "sound-type",
        "tone, noise or chirp",
        "loaa",
        {"rank": 8, "kernels": "attn:T,ffn:F"},
        ("tone", "noise", "chirp"),
    ),
    Task("pitch", "low or high tone", "soft_moa", {"num_experts": 4, "rank": 4}, ("low", "high")),
)


def synth(task: str, label: str, rng: np.random.Generator) -> bytes:
    """A labelled 1 s stereo WAV at 44.1 kHz (so decoding, downmix and resampling all run)."""
    t = np.arange(int(SOURCE_RATE * SECONDS)) / SOURCE_RATE
    amp = rng.uniform(0.2, 0.6)
    if task == "sound-type" and label == "tone":
        wave = np.sin(2 * math.pi * rng.uniform(300, 3000) * t)
    elif task == "sound-type" and label == "noise":
        wave = rng.standard_normal(t.size) * 0.5
    elif task == "sound-type":  # chirp: a sweep from f0 to f1
        f0, f1 = rng.uniform(200, 800), rng.uniform(2000, 6000)
        wave = np.sin(2 * math.pi * (f0 * t + (f1 - f0) * t**2 / (2 * SECONDS)))
    else:
        f = rng.uniform(150, 400) if label == "low" else rng.uniform(2500, 5000)
        wave = np.sin(2 * math.pi * f * t)
    wave = amp * wave + rng.standard_normal(t.size) * 0.01
    stereo = np.stack([wave, wave * rng.uniform(0.7, 1.0)], axis=1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, stereo, SOURCE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def featurise(wav: bytes) -> torch.Tensor:
    """Upload bytes -> normalised fbank ``[frames, mel]``, the server's path."""
    wave, rate = decode_audio(wav)
    return extract(wave, rate, FEATURES)


def dataset(task: Task, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` featurised clips of ``task`` with balanced labels."""
    rng = np.random.default_rng(seed)
    labels = [i % len(task.labels) for i in range(n)]
    specs = [featurise(synth(task.name, task.labels[y], rng)) for y in labels]
    return torch.stack(specs), torch.tensor(labels)


def train(
    backbone: VisionTransformer, task: Task, x: torch.Tensor, y: torch.Tensor, steps: int
) -> AdapterBank:
    """Train one fresh adapter + head (the trainer proper lives in ``training/``)."""
    bank = AdapterBank(backbone.cfg, capacity=1, device=x.device, trainable=True)
    bank.add(task.name, task.method, task.config, HeadConfig(num_classes=len(task.labels)))
    model = MultiAdapterModel(backbone, bank)
    optimizer = torch.optim.AdamW(bank.trainable_parameters(task.name), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    # disable=None: a progress bar on a terminal, quiet in logs and CI.
    bar = tqdm(range(steps), desc=f"train {task.name} ({task.method})", leave=False, disable=None)
    for _ in bar:
        idx = torch.randint(0, x.shape[0], (16,), generator=gen)
        loss = F.cross_entropy(model.logits(x[idx], task.name), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return bank


def main() -> None:
    source = os.environ.get("LOOKASIDE_BACKBONE", "random:test_vit")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    start = time.perf_counter()
    print(f"Lookaside demo: backbone {source!r} on {device}")
    if source.startswith("random:"):
        print("  (random frozen weights: offline; set LOOKASIDE_BACKBONE for pretrained ones)")
    backbone = load_backbone(source, device=device)
    print(
        f"  {backbone.cfg.name}: {backbone.num_params / 1e6:.2f}M frozen parameters, "
        f"fingerprint {backbone.fingerprint()}"
    )

    with tempfile.TemporaryDirectory(prefix="lookaside-demo-store-") as tmp:
        correct, total = _run(backbone, Path(tmp), device)
    print(f"\n{correct}/{total} correct in {time.perf_counter() - start:.1f} s")
    if correct < total // 2:
        raise SystemExit("demo accuracy is at chance level: something is broken")


def _run(backbone: VisionTransformer, store: Path, device: torch.device) -> tuple[int, int]:
    """Train, save, reload and serve; returns (correct, total) on the mixed batch."""
    for i, task in enumerate(TASKS):
        x, y = dataset(task, 96, seed=10 + i)
        bank = train(backbone, task, x.to(device), y.to(device), steps=300)
        ckpt = AdapterCheckpoint.from_bank(
            bank,
            task.name,
            name=task.name,
            version=1,
            task=task.description,
            task_type="multiclass",
            labels=task.labels,
            features=FEATURES,
            backbone=backbone,
        )
        manifest = ckpt.save(store / task.name / "1")
        print(
            f"  trained {task.name} with {task.method}: {manifest.trainable_params} params "
            f"({manifest.trainable_percent:.2f} % of the backbone) -> {store / task.name / '1'}"
        )

    # Serve: a fresh bank, both checkpoints loaded (validated, never unpickled), one mixed batch.
    bank = AdapterBank(backbone.cfg, device=device)
    ids = [load_checkpoint(store / t.name / "1", backbone=backbone).load_into(bank) for t in TASKS]
    model = MultiAdapterModel(backbone, bank)
    rng = np.random.default_rng(99)
    rows: list[tuple[str, Task, str]] = []
    for j in range(12):
        task = TASKS[j % 2]
        truth = task.labels[(j // 2) % len(task.labels)]
        rows.append((ids[j % 2], task, truth))
    spec = torch.stack([featurise(synth(t.name, truth, rng)) for _, t, truth in rows]).to(device)
    with torch.inference_mode():
        logits = model(spec, [adapter_id for adapter_id, _, _ in rows])
    print("\nOne mixed batch, one backbone pass, each row with its own adapter:")
    correct = 0
    for (adapter_id, task, truth), row_logits in zip(rows, logits, strict=True):
        assert row_logits is not None
        probs = bank.head(adapter_id).probabilities(row_logits)
        k = int(probs.argmax())
        correct += task.labels[k] == truth
        mark = "ok " if task.labels[k] == truth else "MISS"
        print(f"  {mark} {adapter_id:<14} truth {truth:<6} -> {task.labels[k]:<6} p={probs[k]:.2f}")
    return correct, len(rows)


if __name__ == "__main__":
    main()
