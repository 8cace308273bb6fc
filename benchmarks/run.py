"""Reproducible speed/memory benchmarks (printed, never asserted in tests).

    python -m benchmarks.run                       # both suites, defaults below
    python -m benchmarks.run --suite backbone --batches 1 8 32
    python -m benchmarks.run --suite adapters --iters 10 --json out.json

Suites:
- ``backbone``: ViT-B/16 on 256 tokens (a 5 s clip, 512 frames) at each batch size, clips/s in
  fp32 and bf16 autocast, and peak memory (CUDA: allocator peak; CPU: peak RSS growth sampled
  during the timed runs).
- ``lora_site``: milliseconds one LoRA site (8 adapters mixed per row, or one for the batch) adds
  to a block's qkv linear, ours against PEFT's LoRA layer (:mod:`benchmarks.lora_site`): a
  measurement short enough to repeat many times, so it separates costs that whole-model clips/s
  on a shared machine cannot.
- ``bank``: milliseconds to add one adapter as the bank fills (must stay flat), and to remove.
- ``adapters``: batch 8, fp32 and bf16, backbone-only clips/s and the ratio to it with (a) one
  LoAA 2 % adapter for the whole batch, (b) 8 adapters of 8 different methods, (c) 8 adapters of
  the same method; and the multi-LoRA peer (:mod:`benchmarks.peer_peft`): 8 LoRA adapters of
  rank 8 mixed per row, one LoRA for the whole batch, PEFT's mixed-batch LoRA (``adapter_names=``)
  on the same timm weights, and that timm model alone. All variants run interleaved in one
  process, one timed run of each per round; clips/s is the median over ``--iters`` rounds, a ratio
  the median of the per-round ratios (pairs measured back to back, so slow drift cancels); the
  quartiles over rounds are reported beside both.

Weights are random (speed does not depend on their values); shapes are the real ViT-B/16. The
adapters suite builds its backbone from timm's ``vit_base_patch16_224`` (random init, 128 x 512
grid, one channel) through ``from_timm_model``, so ours and the peer share every weight.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import torch

from benchmarks import lora_site, peer_peft
from lookaside.adapters import HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.backbones import PRESETS, build_random
from lookaside.bank import AdapterBank
from lookaside.model import MultiAdapterModel

FRAMES = 512  # 5 s at 10 ms hop -> 8 x 32 = 256 tokens on ViT-B/16
DEFAULT_PRESET = "vit_base_patch16"
MEL = 128

# (b): one adapter of each of eight methods, at the papers' sizes.
MIXED: list[tuple[str, dict[str, object]]] = [
    ("linear", {}),
    ("bottleneck", {"rank": 108, "sites": ["attn", "ffn"]}),
    ("lora", {"rank": 8}),
    ("convpass", {"rank": 8}),
    ("loaa", {"rank": 36, "kernels": "attn:T"}),
    ("dense_moa", {"num_experts": 14, "rank": 1}),
    ("soft_moa", {"num_experts": 14, "rank": 1}),
    ("aat", {"rank": 64}),
]
LOAA_2PCT: tuple[str, dict[str, object]] = ("loaa", {"rank": 36, "kernels": "attn:T"})


@dataclass
class Result:
    """One measured configuration."""

    suite: str
    name: str
    batch: int
    dtype: str
    value: float
    unit: str
    peak_mem_mb: float = 0.0
    ratio: float | None = None
    """Median over rounds of (backbone-only time / this time) (adapters suite)."""
    value_q1: float | None = None
    """Lower quartile of ``value`` over rounds (with ``value_q3``: the spread)."""
    value_q3: float | None = None
    ratio_q1: float | None = None
    """Quartiles of the per-round ratios."""
    ratio_q3: float | None = None
    ratio_to_peft: float | None = None
    """Median over rounds of (PEFT mixed-LoRA time / this time): > 1 is faster than PEFT."""
    rounds: int = 1


class _RssSampler:
    """Peak resident-set growth of this process while active (CPU peak memory)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def __enter__(self) -> _RssSampler:
        self.base = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _load() -> str:
    """1/5/15-minute load averages: timings on a shared machine mean little without them."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _precision(device: torch.device, dtype: str) -> Iterator[None]:
    if dtype == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def _time(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _measure(
    fn: Callable[[], object], device: torch.device, iters: int, warmup: int
) -> tuple[list[float], float]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        times = _time(fn, device, iters, warmup)
        return times, (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with _RssSampler() as sampler:
        times = _time(fn, device, iters, warmup)
    return times, sampler.peak / 2**20


def _backbone(device: torch.device, preset: str) -> VisionTransformer:
    return build_random(PRESETS[preset]).to(device)


def _backbone_peak_mb(device_name: str, preset: str, batch: int, dtype: str) -> float:
    """Peak memory growth of one forward; run in a fresh process on CPU (see suite_backbone)."""
    device = torch.device(device_name)
    backbone = _backbone(device, preset)
    spec = torch.randn(batch, FRAMES, MEL, device=device)
    _, mem = _measure(functools.partial(_run_backbone, backbone, spec, device, dtype), device, 1, 1)
    return mem


def _run_backbone(
    backbone: VisionTransformer, spec: torch.Tensor, device: torch.device, dtype: str
) -> object:
    with torch.inference_mode(), _precision(device, dtype):
        return backbone(spec)


def suite_backbone(
    device: torch.device,
    batches: list[int],
    dtypes: list[str],
    iters: int,
    warmup: int,
    preset: str = DEFAULT_PRESET,
) -> list[Result]:
    """Backbone-only throughput and peak memory per batch size and precision.

    Throughput is timed in this process. Peak memory on CPU is read in a fresh process with a
    fixed glibc mmap threshold, so large frees go back to the OS and RSS follows the live tensors
    (in this process the allocator keeps freed buffers and hides the peak; the fixed threshold
    also slows allocation, so it is not used for timing). CUDA uses the allocator's own peak.
    """
    backbone = _backbone(device, preset)
    ctx = multiprocessing.get_context("spawn")
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))  # read by the children only
    results = []
    for dtype in dtypes:
        for batch in batches:
            spec = torch.randn(batch, FRAMES, MEL, device=device)
            run = functools.partial(_run_backbone, backbone, spec, device, dtype)
            times, mem = _measure(run, device, iters, warmup)
            if device.type == "cpu":
                with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                    mem = pool.submit(_backbone_peak_mb, "cpu", preset, batch, dtype).result()
            cps = batch / statistics.median(times)
            r = Result("backbone", "vit_b16_256tok", batch, dtype, cps, "clips/s", mem)
            print(
                f"{r.name:>16} batch {batch:>3} {dtype:>4}: {r.value:8.2f} clips/s, "
                f"peak +{mem:7.1f} MiB",
                flush=True,
            )
            results.append(r)
    return results


def _adapter_model(
    backbone: VisionTransformer, device: torch.device, dtype: torch.dtype
) -> MultiAdapterModel:
    """The benchmark's 16 adapters in one bank whose tensors are stored in ``dtype``.

    A server stores adapters in its compute dtype, so bf16 runs use a bf16 bank (no per-call
    weight casts); the frozen backbone is shared, never copied.
    """
    # 16 slots: the LoAA stack holds loaa0..loaa7 and the mixed set's LoAA (same config).
    bank = AdapterBank.for_backbone(backbone, capacity=16, dtype=dtype)
    head = HeadConfig(num_classes=50)
    method, cfg = LOAA_2PCT
    for i in range(8):  # (a) uses loaa0 alone; (c) uses loaa0..loaa7 (one stack, 8 slots)
        bank.add(f"loaa{i}", method, cfg, head, seed=i)
    for i, (method, cfg) in enumerate(MIXED):
        bank.add(f"mixed{i}-{method}", method, cfg, head, seed=100 + i)
    _nonzero(bank)
    return MultiAdapterModel(backbone, bank)


def _copy_adapters(source: AdapterBank, target: AdapterBank, ids: list[str]) -> None:
    """Load ``ids`` from one bank into another (the fp32 peer's LoRA twins into a bf16 bank)."""
    for adapter_id in ids:
        entry = source.entries[adapter_id]
        head = source.head(adapter_id).cfg
        target.add(adapter_id, entry.method, entry.config, head, source.adapter_tensors(adapter_id))


def _nonzero(bank: AdapterBank) -> None:
    """Zero-initialised up projections would let a lazy kernel skip work: fill everything."""
    with torch.no_grad():
        for p in bank.parameters():
            p.normal_(0, 0.02)


def _forward(
    model: MultiAdapterModel,
    spec: torch.Tensor,
    row_ids: list[str] | None,
    device: torch.device,
    dtype: str,
) -> object:
    with torch.inference_mode(), _precision(device, dtype):
        if row_ids is None:  # backbone only
            return model.backbone.forward_features(spec)
        return model(spec, row_ids)


def _features(
    model: MultiAdapterModel,
    spec: torch.Tensor,
    row_ids: list[str | None],
    device: torch.device,
    dtype: str,
) -> object:
    """Pooled backbone features with per-row adapters: the work PEFT's peer does (no heads)."""
    with torch.inference_mode(), _precision(device, dtype), model.bank.route(row_ids) as route:
        return model.backbone(spec, route)


def _peft(
    peft_model: torch.nn.Module,
    image: torch.Tensor,
    names: list[str] | None,
    device: torch.device,
    dtype: str,
) -> object:
    """PEFT's mixed-batch LoRA (``names`` per row), or its timm model alone (``names`` None)."""
    with torch.inference_mode(), _precision(device, dtype):
        if names is None:
            with peft_model.disable_adapter():  # type: ignore[operator]
                return peft_model(image)
        return peer_peft.peft_forward(peft_model, image, names)


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def _peer_available(preset: str) -> str | None:
    """Why the PEFT peer cannot run (None when it can)."""
    if preset not in peer_peft.TIMM_SHAPES:
        return f"preset {preset!r} has no timm twin"
    try:
        import peft  # noqa: F401
        import timm  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[dev]')"
    return None


def suite_adapters(
    device: torch.device,
    dtypes: list[str],
    iters: int,
    warmup: int,
    preset: str = DEFAULT_PRESET,
    batch: int = 8,
    peer: bool = True,
    variants: list[str] | None = None,
) -> list[Result]:
    """Adapter overhead as ratios to backbone-only throughput, and the PEFT peer, batch 8."""
    missing = _peer_available(preset) if peer else "disabled (--no-peer)"
    timm_model = None
    if missing is None:
        timm_model = peer_peft.timm_vit(preset, MEL, FRAMES)
        backbone = peer_peft.backbone_from_timm(timm_model, preset).to(device)
    else:
        print(f"PEFT peer skipped: {missing}", flush=True)
        backbone = _backbone(device, preset)
    ids: dict[str, list[str] | None] = {
        "backbone_only": None,
        "a_one_loaa_2pct": ["loaa0"] * batch,
        "b_8_mixed_methods": [f"mixed{i % 8}-{MIXED[i % 8][0]}" for i in range(batch)],
        "c_8_same_method": [f"loaa{i % 8}" for i in range(batch)],
    }
    results = []
    fp32_model = None
    lora = None
    for dtype in dtypes:
        model = _adapter_model(
            backbone, device, torch.bfloat16 if dtype == "bf16" else torch.float32
        )
        spec = torch.randn(batch, FRAMES, MEL, device=device)
        runs: dict[str, Callable[[], object]] = {
            name: functools.partial(_forward, model, spec, row_ids, device, dtype)
            for name, row_ids in ids.items()
        }
        if timm_model is not None:
            if lora is None:  # PEFT wraps the timm model once; its twins go into an fp32 bank
                fp32_model = (
                    model if dtype == "fp32" else _adapter_model(backbone, device, torch.float32)
                )
                lora = peer_peft.add_peer_adapters(timm_model, backbone, fp32_model.bank)
                print(
                    f"PEFT peer: {len(lora.ours)} LoRA adapters (rank 8, PEFT on the fused qkv "
                    f"with its k third zero = ours on q and v); max |ours - PEFT| on a mixed "
                    f"batch {lora.max_abs_diff:.2e} (adapter effect {lora.adapter_effect:.2e})",
                    flush=True,
                )
            if model is not fp32_model:
                assert fp32_model is not None
                _copy_adapters(fp32_model.bank, model.bank, lora.ours)
            mixed: list[str | None] = [lora.ours[i % len(lora.ours)] for i in range(batch)]
            image = peer_peft.spec_to_image(spec)
            runs["lora_8_mixed"] = functools.partial(_features, model, spec, mixed, device, dtype)
            runs["lora_1_whole_batch"] = functools.partial(
                _features, model, spec, [lora.ours[0]] * batch, device, dtype
            )
            runs["peft_lora_8_mixed"] = functools.partial(
                _peft,
                lora.peft,
                image,
                [lora.peft_names[i % len(lora.peft_names)] for i in range(batch)],
                device,
                dtype,
            )
            runs["timm_backbone_only"] = functools.partial(
                _peft, lora.peft, image, None, device, dtype
            )
        if variants:
            runs = {n: f for n, f in runs.items() if n in variants or n == "backbone_only"}
        results += _interleaved(runs, device, iters, warmup, batch, dtype)
    return results


def _interleaved(
    runs: dict[str, Callable[[], object]],
    device: torch.device,
    iters: int,
    warmup: int,
    batch: int,
    dtype: str,
) -> list[Result]:
    """Time every variant once per round, ``iters`` rounds; ratios from same-round pairs."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    mems: dict[str, float] = dict.fromkeys(runs, 0.0)
    for fn in runs.values():  # warm every variant first
        _time(fn, device, 0, warmup)
    for _ in range(iters):  # interleave: one timed run of each variant per round
        for name, fn in runs.items():
            t, mem = _measure(fn, device, 1, 0)
            times[name] += t
            mems[name] = max(mems[name], mem)
    base = times["backbone_only"]
    peft = times.get("peft_lora_8_mixed")
    results = []
    for name in runs:
        per_round = [batch / t for t in times[name]]
        # Ratio of each round's pair (measured back to back), then the median over rounds:
        # slow drift of the machine cancels within a pair.
        ratios = [b / t for b, t in zip(base, times[name], strict=True)]
        r = Result(
            "adapters",
            name,
            batch,
            dtype,
            statistics.median(per_round),
            "clips/s",
            mems[name],
            statistics.median(ratios),
            *_quartiles(per_round),
            *_quartiles(ratios),
            rounds=len(per_round),
        )
        if peft is not None and name.startswith("lora_"):
            r.ratio_to_peft = statistics.median(
                p / t for p, t in zip(peft, times[name], strict=True)
            )
        vs_peft = f"  vs PEFT {r.ratio_to_peft:.3f}" if r.ratio_to_peft is not None else ""
        print(
            f"{name:>18} batch {batch} {dtype:>4}: {r.value:8.2f} clips/s "
            f"[{r.value_q1:.2f}, {r.value_q3:.2f}]  ratio {r.ratio:.3f} "
            f"[{r.ratio_q1:.3f}, {r.ratio_q3:.3f}]{vs_peft}",
            flush=True,
        )
        results.append(r)
    return results


def suite_lora_site(
    device: torch.device, iters: int, preset: str = DEFAULT_PRESET, batch: int = 8
) -> list[Result]:
    """Milliseconds a LoRA site adds to one block's qkv linear: ours vs PEFT (lora_site.py)."""
    try:
        import peft  # noqa: F401
    except ImportError:
        print("lora_site skipped: peft is not installed (pip install -e '.[dev]')", flush=True)
        return []
    cfg = PRESETS[preset]
    grid = cfg.grid_for(MEL, FRAMES)
    rounds = max(iters, 1) * 6  # short timings: many rounds cost little
    stats = lora_site.lora_site_overhead(cfg, grid, device, rounds, batch)
    results = []
    for name, (med, q1, q3) in stats.items():
        r = Result("lora_site", name, batch, "fp32", med, "ms", 0.0, None, q1, q3, rounds=rounds)
        what = "ms (the linear)" if name == "linear_alone" else "ms added to the linear"
        print(
            f"{name:>18} batch {batch} fp32: {med:7.3f} {what} [{q1:.3f}, {q3:.3f}] "
            f"(x{cfg.depth} blocks: {cfg.depth * med:.1f} ms per forward)",
            flush=True,
        )
        results.append(r)
    return results


def suite_bank(device: torch.device, preset: str = DEFAULT_PRESET, count: int = 48) -> list[Result]:
    """Cost of loading adapters into the bank as it fills (it must not grow with the count).

    Each add validates and copies one ViT-B LoAA 2 % adapter (about 2M values) from host tensors
    into a free slot of a stack created with room for all of them (capacity is explicit).
    """
    backbone_cfg = PRESETS[preset]
    donor = AdapterBank(backbone_cfg, capacity=1)
    method, cfg = LOAA_2PCT
    donor.add("donor", method, cfg, HeadConfig(num_classes=50))
    tensors = donor.adapter_tensors("donor")
    bank = AdapterBank(backbone_cfg, capacity=count, device=device)
    times = []
    for i in range(count):
        start = time.perf_counter()
        bank.add(f"a{i}", method, cfg, HeadConfig(num_classes=50), tensors)
        _sync(device)
        times.append(1000 * (time.perf_counter() - start))
    first, last = statistics.median(times[:8]), statistics.median(times[-8:])
    print(
        f"bank add (LoAA 2 %): first 8 median {first:.2f} ms, last 8 median {last:.2f} ms, "
        f"max {max(times):.2f} ms over {count} adds",
        flush=True,
    )
    start = time.perf_counter()
    for i in range(count):
        bank.remove(f"a{i}")
    _sync(device)
    remove_ms = 1000 * (time.perf_counter() - start) / count
    print(f"bank remove: {remove_ms:.2f} ms each", flush=True)
    return [
        Result("bank", "add_first8", 1, "fp32", first, "ms"),
        Result("bank", "add_last8", 1, "fp32", last, "ms"),
        Result("bank", "remove", 1, "fp32", remove_ms, "ms"),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--suite", choices=["backbone", "adapters", "lora_site", "bank", "all"], default="all"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--iters", type=int, default=5, help="timed runs per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--preset", default=DEFAULT_PRESET, choices=list(PRESETS), help="backbone shape"
    )
    parser.add_argument(
        "--no-peer", action="store_true", help="adapters suite without the PEFT multi-LoRA peer"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help="adapters suite: time only these variants (backbone_only is always kept), e.g. "
        "lora_8_mixed lora_1_whole_batch peft_lora_8_mixed timm_backbone_only",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"load average {_load()}",
        flush=True,
    )
    results: list[Result] = []
    if args.suite in ("backbone", "all"):
        results += suite_backbone(
            device, args.batches, args.dtypes, args.iters, args.warmup, args.preset
        )
    if args.suite in ("adapters", "all"):
        results += suite_adapters(
            device,
            args.dtypes,
            args.iters,
            args.warmup,
            args.preset,
            peer=not args.no_peer,
            variants=args.variants,
        )
    if args.suite in ("lora_site", "all"):
        results += suite_lora_site(device, args.iters, args.preset)
    if args.suite in ("bank", "all"):
        results += suite_bank(device, args.preset)
    print(f"load average at the end {_load()}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=2)


if __name__ == "__main__":
    main()
