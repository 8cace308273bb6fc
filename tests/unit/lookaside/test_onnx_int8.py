"""int8 backbone weights against fp32, on adapters *trained* here and clips they never saw.

Random heads give nearly uniform probabilities, where any perturbation flips the top-1: that
measures nothing. So two adapters (LoAA and LoRA, the demo's methods) are trained for a few
dozen steps on the demo's synthetic sound classes, then both precisions label held-out clips
(other seeds) and must agree on top-1 for at least 95 % of them. The bar: dynamic int8
quantisation of a ViT's linear layers typically moves top-1 on well under 5 % of inputs; a
larger disagreement means something other than rounding (a quantised adapter, a wrong scale).
The largest probability difference is reported in the assertion message.
"""

from __future__ import annotations

import io
from pathlib import Path

import soundfile as sf
import torch

from examples.demo import TASKS, clip
from lookaside.adapters import HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.features import FeatureConfig, extract
from lookaside.model import MultiAdapterModel
from lookaside.onnx.runner import OrtFeatures

FEATURES = FeatureConfig(target_frames=96)
ADAPTERS = {
    "tones": ("loaa", {"rank": 8, "kernels": "attn:T,ffn:F"}),
    "noises": ("lora", {"rank": 8}),
}


def _spec(task: str, label: str, seed: int) -> torch.Tensor:
    wave, rate = sf.read(io.BytesIO(clip(task, label, seed)), dtype="float32")
    return extract(torch.from_numpy(wave), rate, FEATURES)


def _data(seeds: range) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for task, synths in TASKS.items():
        specs, labels = [], []
        for k, label in enumerate(synths):
            for seed in seeds:
                specs.append(_spec(task, label, 1000 * k + seed))
                labels.append(k)
        out[task] = (torch.stack(specs), torch.tensor(labels))
    return out


def _train(backbone: VisionTransformer) -> MultiAdapterModel:
    bank = AdapterBank.for_backbone(backbone, capacity=1, trainable=True)
    for task, (method, cfg) in ADAPTERS.items():
        bank.add(task, method, cfg, HeadConfig(num_classes=len(TASKS[task])), seed=1)
    model = MultiAdapterModel(backbone, bank)
    gen = torch.Generator().manual_seed(0)
    for task, (spec, labels) in _data(range(8)).items():
        params = bank.trainable_parameters(task)
        opt = torch.optim.Adam(params, lr=3e-3)
        for _ in range(40):
            pick = torch.randperm(len(labels), generator=gen)[:16]
            loss = torch.nn.functional.cross_entropy(model.logits(spec[pick], task), labels[pick])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    bank.requires_grad_(False)
    return model.eval()


def test_int8_top1_agrees_with_fp32_on_held_out_clips(
    tmp_path: Path, tiny_backbone: VisionTransformer
) -> None:
    model = _train(tiny_backbone)
    held_out = _data(range(500, 510))
    probs: dict[str, list[torch.Tensor]] = {}
    for precision in ("fp32", "int8"):
        model.runner = OrtFeatures(
            tiny_backbone,
            model.bank,
            cache_dir=tmp_path,
            precision=precision,  # type: ignore[arg-type]
            background=False,
        )
        with torch.inference_mode():
            for task, (spec, _) in held_out.items():
                rows = model(spec, [task] * len(spec))
                probs.setdefault(precision, []).append(
                    torch.softmax(torch.stack([r for r in rows if r is not None]), -1)
                )
        assert model.runner.stats()["graph_runs"] == len(held_out)  # type: ignore[union-attr]
    fp32, int8 = torch.cat(probs["fp32"]), torch.cat(probs["int8"])
    labels = torch.cat([labels for _, labels in held_out.values()])
    agreement = float((fp32.argmax(-1) == int8.argmax(-1)).float().mean())
    diff = float((fp32 - int8).abs().max())
    accuracy = float((fp32.argmax(-1) == labels).float().mean())
    assert accuracy >= 0.8, f"the adapters did not learn (fp32 accuracy {accuracy:.2f})"
    assert agreement >= 0.95, f"top-1 agreement {agreement:.3f}, max prob diff {diff:.4f}"
    assert diff > 0.0  # the backbone really ran quantised
