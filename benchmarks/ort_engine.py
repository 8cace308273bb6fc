"""The ONNX Runtime engine against eager PyTorch on ViT-B/16: clips/s, overhead, agreement.

    python -m benchmarks.ort_engine --iters 5 --cache .lookaside-cache/onnx

One process, one bank (the adapters suite's 16 adapters: 8 LoAA 2 % + one of each of 8 methods),
batch 8 of 5 s clips (512 frames, 256 tokens), random weights (speed does not depend on them).
Variants run interleaved, one timed forward of each per round; clips/s is the median over
rounds, a ratio the median of per-round ratios, quartiles beside both. Graphs are exported once
into ``--cache`` (minutes on 2 cores) and reused by later runs. Agreement: int8 against fp32
(ORT) logits of the mixed batch: top-1 agreement and the largest probability difference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.run import DEFAULT_PRESET, MEL, MIXED, _adapter_model, _backbone, _quartiles
from lookaside.model import MultiAdapterModel
from lookaside.onnx.runner import OrtFeatures

FRAMES = 512
BATCH = 8


def _traffic() -> dict[str, list[str | None]]:
    mixed = [f"mixed{i}-{m}" for i, (m, _) in enumerate(MIXED)]
    return {
        "bare": [None] * BATCH,
        "a_one_loaa_2pct": ["loaa0"] * BATCH,
        "b_8_methods": [mixed[i % len(mixed)] for i in range(BATCH)],
        "c_8_same_method": [f"loaa{i % 8}" for i in range(BATCH)],
    }


def _logits(model: MultiAdapterModel, spec: torch.Tensor, ids: list[str | None]) -> list[object]:
    with torch.inference_mode():
        return model(spec, ids)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path(".lookaside-cache/onnx"))
    parser.add_argument("--preset", default=DEFAULT_PRESET)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--bf16", action="store_true", help="also torch bf16 autocast")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    backbone = _backbone(device, args.preset)
    model = _adapter_model(backbone, device, torch.float32).eval()
    engines: dict[str, Callable[[list[str | None]], object]] = {}
    spec = torch.randn(BATCH, FRAMES, MEL)

    def torch_fp32(ids: list[str | None]) -> object:
        model.runner = None
        return _logits(model, spec, ids)

    engines["torch_fp32"] = torch_fp32
    if args.bf16:
        bf = _adapter_model(backbone, device, torch.bfloat16).eval()

        def torch_bf16(ids: list[str | None]) -> object:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return _logits(bf, spec, ids)

        engines["torch_bf16"] = torch_bf16
    runners = {}
    for precision in ("fp32", "int8"):
        started = time.perf_counter()
        runner = OrtFeatures(
            backbone, model.bank, cache_dir=args.cache, precision=precision, background=False
        )
        model.runner = runner
        for prompt_free in _traffic().values():
            _logits(model, spec, prompt_free)  # builds (or loads) the graph
        print(
            f"ort {precision}: graph ready in {time.perf_counter() - started:.1f} s "
            f"(built {runner.cache.builds}, reused {runner.cache.reused})",
            flush=True,
        )
        runners[precision] = runner

        def run(ids: list[str | None], r: OrtFeatures = runner) -> object:
            model.runner = r
            return _logits(model, spec, ids)

        engines[f"ort_{precision}"] = run
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.iters):
        for traffic, ids in _traffic().items():
            for name, fn in engines.items():
                started = time.perf_counter()
                fn(ids)
                times.setdefault((name, traffic), []).append(time.perf_counter() - started)
    report = _report(times, args.iters)
    report["agreement"] = _agreement(model, runners, spec)
    report["load_average"] = os.getloadavg()
    report["threads"] = torch.get_num_threads()
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def _report(times: dict[tuple[str, str], list[float]], iters: int) -> dict[str, object]:
    out: dict[str, object] = {"clips_per_s": {}, "ratios": {}}
    clips = out["clips_per_s"]
    assert isinstance(clips, dict)
    for (name, traffic), ts in times.items():
        rates = [BATCH / t for t in ts]
        clips[f"{name}/{traffic}"] = (statistics.median(rates), _quartiles(rates))
    ratios = out["ratios"]
    assert isinstance(ratios, dict)
    names = {n for n, _ in times}

    def ratio(a: tuple[str, str], b: tuple[str, str]) -> tuple[float, tuple[float, float]]:
        per_round = [tb / ta for ta, tb in zip(times[a], times[b], strict=True)]
        return statistics.median(per_round), _quartiles(per_round)

    for base in sorted(n for n in names if n != "ort_int8"):
        if "ort_int8" in names:
            ratios[f"ort_int8/{base} (b)"] = ratio(
                ("ort_int8", "b_8_methods"), (base, "b_8_methods")
            )
    if "ort_fp32" in names:
        ratios["ort_fp32/torch_fp32 (b)"] = ratio(
            ("ort_fp32", "b_8_methods"), ("torch_fp32", "b_8_methods")
        )
    for name in sorted(names):
        for traffic in ("a_one_loaa_2pct", "b_8_methods", "c_8_same_method"):
            ratios[f"overhead {name} {traffic}"] = ratio((name, traffic), (name, "bare"))
    out["iters"] = iters
    return out


def _agreement(
    model: MultiAdapterModel, runners: dict[str, OrtFeatures], spec: torch.Tensor
) -> dict[str, float]:
    ids = _traffic()["b_8_methods"]
    got = {}
    for precision, runner in runners.items():
        model.runner = runner
        rows = _logits(model, spec, ids)
        got[precision] = torch.stack([torch.softmax(r, -1) for r in rows])  # type: ignore[arg-type]
    model.runner = None
    eager = torch.stack([torch.softmax(r, -1) for r in _logits(model, spec, ids)])  # type: ignore[arg-type]
    return {
        "fp32_vs_torch_max_prob_diff": float((got["fp32"] - eager).abs().max()),
        "int8_vs_fp32_top1_agreement": float(
            (got["int8"].argmax(-1) == got["fp32"].argmax(-1)).float().mean()
        ),
        "int8_vs_fp32_max_prob_diff": float((got["int8"] - got["fp32"]).abs().max()),
    }


if __name__ == "__main__":
    main()
