"""Training throughput on ViT-B/16 (5 s clips, 256 tokens): feature cache cold vs warm, and the
linear probe on cached pooled tokens. Brief by design (a few batches); prints clips/s.

    python -m training.benchmark [--clips 16] [--batch-size 8] [--device cpu] [--precision fp32]

Synthetic 5 s clips (two classes) in the folder layout, random ViT-B/16 weights (throughput does
not depend on the weights). Epoch 1 of the LoAA run decodes and featurises every clip (cold
cache); epoch 2 reads the cached fbank (warm). The linear probe runs the backbone once per clip
to cache pooled tokens, then trains the head on them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from lookaside.features import FeatureConfig
from training.args import build_args
from training.cache import FeatureCache
from training.data import ClipDataset
from training.datasets import Clip
from training.pipeline import train


def _clips(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(5 * 16_000) / 16_000
    for i in range(n):
        label = ("tone", "noise")[i % 2]
        wave = (
            np.sin(2 * math.pi * rng.uniform(300, 900) * t)
            if label == "tone"
            else rng.standard_normal(t.size)
        )
        (root / label).mkdir(parents=True, exist_ok=True)
        sf.write(root / label / f"{i:03d}.wav", (0.3 * wave).astype(np.float32), 16_000)


def common_args(ns: argparse.Namespace, root: Path, out: Path) -> dict[str, Any]:
    """The train settings both timed runs share (TensorBoard off: a benchmark times training,
    not the event file or the kept scores)."""
    return {
        "dataset": "folder",
        "data_dir": root,
        "backbone": "random:vit_base_patch16",
        "out": out,
        "frames": 512,
        "batch_size": ns.batch_size,
        "eval_batch_size": ns.batch_size,
        "val_fraction": 4 / (ns.clips + 4),
        "device": ns.device,
        "precision": ns.precision,
        "workers": ns.workers,
        "progress": False,
        "tensorboard": False,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clips", type=int, default=16, help="training clips (val gets 4 more)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--data-only", action="store_true", help="only the feature-cache timing")
    p.add_argument("--skip-loaa", action="store_true", help="only features + linear probe")
    ns = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "clips"
        _clips(root, ns.clips + 4)
        common = common_args(ns, root, Path(tmp) / "out")
        rows = _feature_rows(root)
        if ns.data_only:
            _print(rows, ns, "")
            return
        t0 = time.perf_counter()
        if not ns.skip_loaa:
            loaa = train(
                build_args(
                    [
                        {
                            **common,
                            "method": "loaa",
                            "rank": 36,
                            "kernels": "attn:T",
                            "epochs": 2,
                            "name": "loaa",
                        }
                    ]
                )
            )
            hist = json.loads((loaa.run_dir / "metrics.json").read_text())["history"]
            rows.append(("LoAA attn:T r=36, cache cold (epoch 1)", hist[0]["clips_per_s"]))
            rows.append(("LoAA attn:T r=36, cache warm (epoch 2)", hist[1]["clips_per_s"]))
        t1 = time.perf_counter()
        probe = train(
            build_args([{**common, "method": "linear", "epochs": 3, "lr": 1e-2, "name": "probe"}])
        )
        t2 = time.perf_counter()
        hist = json.loads((probe.run_dir / "metrics.json").read_text())["history"]
        rows.append(("linear probe on cached pooled tokens (epoch 2)", hist[1]["clips_per_s"]))
        _print(
            rows,
            ns,
            f"  LoAA run wall time {t1 - t0:.1f} s; linear-probe run (token extraction "
            f"included) {t2 - t1:.1f} s\n",
        )


def _feature_rows(root: Path) -> list[tuple[str, float]]:
    """Clips/s of the data side alone: decode + fbank (cold) vs reading the cache (warm)."""
    clips = [Clip(p, 0) for p in sorted(root.rglob("*.wav"))]
    cfg = FeatureConfig(target_frames=512)
    with tempfile.TemporaryDirectory() as cache_dir:
        rates = []
        for _ in range(2):  # cold, then warm (a new cache object: nothing memoised in memory)
            ds = ClipDataset(clips, cfg, FeatureCache(Path(cache_dir), cfg))
            t = time.perf_counter()
            for i in range(len(ds)):
                ds[i]
            rates.append(len(ds) / (time.perf_counter() - t))
    return [
        ("features only, cache cold (decode + fbank)", rates[0]),
        ("features only, cache warm (read .npy)", rates[1]),
    ]


def _print(rows: list[tuple[str, float]], ns: argparse.Namespace, tail: str) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out = sys.stdout
    out.write(
        f"ViT-B/16, 5 s clips (512 frames, 256 tokens), batch {ns.batch_size}, "
        f"{ns.clips} training clips, {ns.device} {ns.precision}, "
        f"load average {load:.1f} on {os.cpu_count()} CPUs\n"
    )
    for name, value in rows:
        out.write(f"  {name:50s} {value:10.2f} clips/s\n")
    out.write(tail)


if __name__ == "__main__":
    main()
