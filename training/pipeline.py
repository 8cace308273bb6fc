"""The ``train``, ``evaluate`` and ``crossval`` commands as functions (the CLI only parses).

``train``: dataset -> features (cached) -> backbone + one trainable adapter -> :func:`fit` ->
best epoch restored -> checkpoint -> the checkpoint is loaded into a *fresh* bank and evaluated
by the same :func:`evaluate_checkpoint` the ``evaluate`` command runs, so the number in the
manifest is the number ``evaluate`` prints -> ``<out>/<name>/<version>/`` with reports beside it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from tqdm import tqdm

from lookaside.adapters import HeadConfig, get_method
from lookaside.backbone import VisionTransformer
from lookaside.backbones import load_backbone
from lookaside.checkpoint import AdapterCheckpoint, load_checkpoint
from lookaside.errors import ConfigError
from lookaside.features import FeatureConfig
from lookaside.model import MultiAdapterModel
from training import plots
from training.args import TrainArgs
from training.augment import BackgroundNoise, SpecAugment
from training.cache import FeatureCache
from training.data import ClipDataset, make_loader
from training.datasets import AveSplits, DataOptions, DatasetSplits, load_dataset
from training.export import check_name, checkpoint_of, make_bank, next_version
from training.loop import (
    AdapterForward,
    EvalResult,
    FitState,
    LoopConfig,
    PooledHead,
    evaluate,
    fit,
    load_adapter_tensors,
)
from training.state import load_state, save_state

ADAPTER_ID = "train"


@dataclass
class TrainReport:
    """What a finished run produced."""

    run_dir: Path
    metrics: dict[str, float]
    best_epoch: int
    trainable_params: int
    trainable_percent: float
    train_clips_per_s: float
    seconds: float


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available (this process's local rank under torchrun), else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda, but no CUDA device is visible; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _check_precision(args: TrainArgs, device: torch.device) -> torch.device:
    if args.precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return device


def _init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the torchrun group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def data_options(args: TrainArgs) -> DataOptions:
    """The loader options of ``args``."""
    if args.data_dir is None:
        raise ConfigError("--data-dir is required: the dataset's root folder (or CSV file)")
    return DataOptions(
        root=args.data_dir,
        fold=args.fold,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        audio=args.audio,
        sample_rate=args.h5_sample_rate,
    )


def feature_config(args: TrainArgs, splits: DatasetSplits | AveSplits) -> FeatureConfig:
    """The dataset's feature defaults with ``--frames`` / ``--mean`` / ``--std`` applied."""
    update = {
        k: v
        for k, v in {"target_frames": args.frames, "mean": args.mean, "std": args.std}.items()
        if v is not None
    }
    return splits.features.model_copy(update=update) if update else splits.features


def compute_stats(ds: ClipDataset, progress: bool) -> tuple[float, float]:
    """Mean and std of the unnormalised fbank over a split (AST's ``get_norm_stats``)."""
    total, total_sq, count = 0.0, 0.0, 0
    for i in tqdm(range(len(ds)), desc="stats", unit="clip", disable=not progress):
        fb = ds.raw(i).double()
        total += float(fb.sum())
        total_sq += float((fb * fb).sum())
        count += fb.numel()
    mean = total / count
    return mean, float(np.sqrt(max(total_sq / count - mean * mean, 1e-12)))


def pooled_tokens(
    backbone: VisionTransformer,
    model: MultiAdapterModel,
    ds: ClipDataset,
    *,
    cache_root: Path | None,
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> TensorDataset:
    """The head's pooled input for every clip, computed once and cached on disk (linear probe).

    Keyed by the backbone fingerprint, the head's pooling and every clip's feature key.
    """
    head = model.bank.head(ADAPTER_ID)
    path = None
    if cache_root is not None:
        digest = hashlib.sha256(
            json.dumps(
                {
                    "backbone": backbone.fingerprint(),
                    "pool": head.cfg.pool,
                    "features": ds.cfg.model_dump(mode="json"),
                    "clips": [ds.cache.key(c, "fbank") for c in ds.clips],
                    "labels": [c.label for c in ds.clips],
                }
            ).encode()
        ).hexdigest()
        path = cache_root / "tokens" / f"{digest}.safetensors"
        if path.is_file():
            saved = load_file(str(path))
            return TensorDataset(saved["pooled"], saved["labels"])
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
    chunks, labels = [], []
    with torch.inference_mode():
        for x, y in tqdm(loader, desc="pooled tokens", unit="batch", disable=not progress):
            tokens, layout = backbone.forward_features(x.to(device))
            chunks.append(head.pool(tokens, layout).float().cpu())
            labels.append(y)
    pooled, label_t = torch.cat(chunks), torch.cat(labels)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # ranks may race on one entry
        save_file({"pooled": pooled.contiguous(), "labels": label_t}, str(tmp))
        os.replace(tmp, path)
    return TensorDataset(pooled, label_t)


def evaluate_checkpoint(
    ckpt: AdapterCheckpoint,
    backbone: VisionTransformer,
    clips_ds: ClipDataset,
    *,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    progress: bool = False,
) -> EvalResult:
    """A checkpoint in a fresh (serving) bank, evaluated on ``clips_ds``: what ``evaluate`` runs."""
    bank = make_bank(backbone, trainable=False)
    adapter_id = ckpt.load_into(bank)
    model = MultiAdapterModel(backbone, bank)
    loader = DataLoader(clips_ds, batch_size=batch_size, shuffle=False)
    return evaluate(
        AdapterForward(model, adapter_id),
        loader,
        device=device,
        precision=precision,  # type: ignore[arg-type]
        num_classes=len(ckpt.manifest.labels),
        progress=progress,
    )


def train(args: TrainArgs) -> TrainReport:
    """Run one training job end to end (see the module docstring)."""
    started = time.perf_counter()
    device = _check_precision(args, resolve_device(args.device))
    splits = load_dataset(args.dataset, data_options(args))
    if isinstance(splits, AveSplits):
        from training.av_pipeline import train_av  # it builds on this module's helpers

        return train_av(args, splits, device)
    rank, world = _init_distributed(device)
    progress = args.progress and rank == 0
    feats, cache, cache_root = _features(args, splits, progress)

    name = check_name(args.adapter_name)
    version, state, current = _version(args, name, world)
    run_dir = args.out / name / str(version)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir} already holds a checkpoint; pick another --version")

    torch.manual_seed(args.seed)
    backbone = load_backbone(args.backbone, device=device)
    frozen_before = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    model, params = _model(args, backbone, len(splits.labels), current, progress)
    bank = model.bank

    train_ds, val_ds, module = _datasets_and_module(
        args, splits, feats, cache, cache_root, model, device, progress
    )
    sampler: DistributedSampler[tuple[Tensor, int]] | None = None
    if world > 1:
        sampler = DistributedSampler(train_ds, world, rank, shuffle=True, seed=args.seed)
        module = DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
    pin = device.type == "cuda"
    train_loader = make_loader(
        train_ds,
        batch_size=args.batch_size,
        shuffle=True,
        seed=args.seed,
        workers=args.workers,
        pin_memory=pin,
        sampler=sampler,
    )
    val_loader = make_loader(
        val_ds,
        batch_size=args.eval_batch_size,
        shuffle=False,
        seed=args.seed,
        workers=args.workers,
        pin_memory=pin,
    )
    loop_cfg = _loop_config(args, progress)
    state_dir = args.out / name / f".state-v{version}"

    def snapshot() -> dict[str, Tensor]:
        return bank.adapter_tensors(ADAPTER_ID)

    def on_epoch_end(s: FitState) -> None:
        if rank == 0:
            save_state(state_dir, s, snapshot(), {"version": version, "args": _jsonable(args)})

    def set_epoch(epoch: int) -> None:
        if sampler is not None:
            sampler.set_epoch(epoch)
        else:  # a fresh, seeded shuffle order per epoch (resumed runs draw the same orders)
            gen = getattr(train_loader, "generator", None)
            if gen is not None:
                gen.manual_seed(args.seed * 100_003 + epoch)

    state = fit(
        module,
        params,
        train_loader,
        val_loader,
        loop_cfg,
        num_classes=len(splits.labels),
        device=device,
        snapshot=snapshot,
        state=state,
        on_epoch_end=on_epoch_end,
        set_epoch=set_epoch,
    )
    _check_frozen(backbone, frozen_before)
    ranks_sha = _rank_hashes(snapshot(), world)

    load_adapter_tensors(bank, ADAPTER_ID, state.best_tensors)
    ckpt = checkpoint_of(
        bank,
        ADAPTER_ID,
        backbone=backbone,
        name=name,
        version=version,
        task=args.task or splits.task,
        labels=splits.labels,
        features=feats,
    )
    metrics, results, final = _final_metrics(
        ckpt, backbone, splits, ClipDataset([], feats, cache), args, device, progress
    )
    ckpt.manifest = ckpt.manifest.model_copy(update={"metrics": metrics})
    last = state.history[-1] if state.history else None
    report = TrainReport(
        run_dir=run_dir,
        metrics=metrics,
        best_epoch=state.best_epoch,
        trainable_params=ckpt.manifest.trainable_params,
        trainable_percent=ckpt.manifest.trainable_percent,
        train_clips_per_s=float(np.mean([h.clips_per_s for h in state.history])) if last else 0.0,
        seconds=time.perf_counter() - started,
    )
    if rank == 0:
        ckpt.save(run_dir)
        _write_reports(run_dir, args, splits, state, results, final, report, ranks_sha, world)
    if world > 1:
        dist.barrier()
    return report


def _model(
    args: TrainArgs,
    backbone: VisionTransformer,
    num_classes: int,
    current: dict[str, Tensor] | None,
    progress: bool,
) -> tuple[MultiAdapterModel, list[torch.nn.Parameter]]:
    """The backbone with one fresh (or resumed) trainable adapter, and its parameters."""
    bank = make_bank(backbone, trainable=True)
    head_cfg = HeadConfig(num_classes=num_classes, pool=args.pool)
    bank.add(ADAPTER_ID, args.method, args.adapter_config(), head_cfg, seed=args.seed)
    if current:
        load_adapter_tensors(bank, ADAPTER_ID, current)
    params = bank.trainable_parameters(ADAPTER_ID)
    n = sum(p.numel() for p in params)
    if progress:
        tqdm.write(
            f"{args.method}: {n:,} trainable parameters ({100 * n / backbone.num_params:.3f} % "
            f"of the backbone's {backbone.num_params:,}, which stay frozen)"
        )
    return MultiAdapterModel(backbone, bank), params


def _loop_config(args: TrainArgs, progress: bool) -> LoopConfig:
    return LoopConfig(
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        grad_clip=args.grad_clip,
        mixup_alpha=args.mixup,
        specaug=SpecAugment(args.freq_mask, args.time_mask) if args.specaug else None,
        seed=args.seed,
        precision=args.precision,
        progress=progress,
    )


def _features(
    args: TrainArgs, splits: DatasetSplits, progress: bool
) -> tuple[FeatureConfig, FeatureCache, Path | None]:
    """Feature config (with measured stats when asked) and the cache it keys."""
    feats = feature_config(args, splits)
    cache_root = (args.cache_dir or args.out / ".cache") if args.feature_cache else None
    cache = FeatureCache(cache_root, feats)
    if args.compute_stats:
        mean, std = compute_stats(ClipDataset(splits.train, feats, cache), progress)
        feats = feats.model_copy(update={"mean": mean, "std": std})
        cache = FeatureCache(cache_root, feats)
    return feats, cache, cache_root


def _version(
    args: TrainArgs, name: str, world: int
) -> tuple[int, FitState | None, dict[str, Tensor] | None]:
    """The version to write (the resumed run's, ``--version``, or the next free one)."""
    state, current = None, None
    if args.resume is not None:
        state, current, extra = load_state(args.resume)
        version = int(extra["version"])
    else:
        version = args.version or next_version(args.out / name)
    if world > 1:  # every rank writes to the version rank 0 chose
        box = [version]
        dist.broadcast_object_list(box, src=0)
        version = int(box[0])
    return version, state, current


def _datasets_and_module(
    args: TrainArgs,
    splits: DatasetSplits,
    feats: FeatureConfig,
    cache: FeatureCache,
    cache_root: Path | None,
    model: MultiAdapterModel,
    device: torch.device,
    progress: bool,
) -> tuple[Dataset[tuple[Tensor, int]], Dataset[tuple[Tensor, int]], torch.nn.Module]:
    """Train / val datasets and the module fit() trains: the adapter on spectrograms, or (linear
    probe with ``--token-cache``) the head alone on cached pooled tokens."""
    noise = None
    if splits.noise_dir is not None:
        noise = BackgroundNoise.from_dir(splits.noise_dir, feats.sample_rate)
    train_clips = ClipDataset(splits.train, feats, cache, noise)
    val_clips = ClipDataset(splits.val, feats, cache)
    if not (get_method(args.method).head_only and args.token_cache):
        return train_clips, val_clips, AdapterForward(model, ADAPTER_ID)
    train_clips.noise = None  # fixed tokens: per-epoch waveform noise cannot apply
    backbone = model.backbone
    kw: dict[str, Any] = {
        "cache_root": cache_root,
        "batch_size": args.eval_batch_size,
        "device": device,
        "progress": progress,
    }
    train_ds = pooled_tokens(backbone, model, train_clips, **kw)
    val_ds = pooled_tokens(backbone, model, val_clips, **kw)
    return train_ds, val_ds, PooledHead(model.bank, ADAPTER_ID)  # type: ignore[return-value]


def _final_metrics(
    ckpt: AdapterCheckpoint,
    backbone: VisionTransformer,
    splits: DatasetSplits,
    template: ClipDataset,
    args: TrainArgs,
    device: torch.device,
    progress: bool,
) -> tuple[dict[str, float], dict[str, EvalResult], str]:
    """The checkpoint evaluated on val (and test) exactly as ``evaluate`` does it."""
    metrics: dict[str, float] = {}
    results: dict[str, EvalResult] = {}
    for split in ("val", "test"):
        clips = splits.split(split)
        if not clips:
            continue
        res = evaluate_checkpoint(
            ckpt,
            backbone,
            ClipDataset(clips, template.cfg, template.cache),
            batch_size=args.eval_batch_size,
            device=device,
            precision=args.precision,
            progress=progress,
        )
        results[split] = res
        metrics[f"{split}_accuracy"] = res.accuracy
        metrics[f"{split}_loss"] = res.loss
        if splits.report_map:
            metrics[f"{split}_map"] = res.mean_ap
    final = "test" if "test" in results else "val"
    metrics["accuracy"] = results[final].accuracy
    return metrics, results, final


def _check_frozen(backbone: VisionTransformer, before: dict[str, Tensor]) -> None:
    """The frozen backbone must come out of training bit-identical."""
    for key, value in backbone.state_dict().items():
        if not torch.equal(value, before[key]):
            raise RuntimeError(f"backbone tensor {key} changed during training")


def _rank_hashes(tensors: dict[str, Tensor], world: int) -> list[str]:
    digest = hashlib.sha256()
    for k in sorted(tensors):
        digest.update(k.encode())
        digest.update(tensors[k].detach().cpu().float().numpy().tobytes())
    mine = digest.hexdigest()
    if world <= 1:
        return [mine]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    return [str(g) for g in gathered]


def _jsonable(args: TrainArgs) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(asdict(args), default=str))
    return out


def _write_reports(
    run_dir: Path,
    args: TrainArgs,
    splits: DatasetSplits | AveSplits,
    state: FitState,
    results: dict[str, EvalResult],
    final: str,
    report: TrainReport,
    ranks_sha: list[str],
    world: int,
) -> None:
    title = f"{run_dir.parent.name}@{run_dir.name} ({args.method}, {splits.name})"
    plots.training_curve(state.history, run_dir / "training_curve.png", title)
    plots.confusion_matrix(
        results[final].confusion,
        splits.labels,
        run_dir / "confusion_matrix.png",
        f"{title}, {final} split",
    )
    if isinstance(splits, DatasetSplits) and splits.split_rows is not None:
        with (run_dir / "split.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "start_s", "end_s", "split"])
            writer.writerows(splits.split_rows)
    body = {
        "metrics": report.metrics,
        "best_epoch": state.best_epoch,
        "history": [asdict(h) for h in state.history],
        "per_class": per_class(results[final].confusion, splits.labels),
        "eval_split": final,
        "trainable_params": report.trainable_params,
        "trainable_percent": report.trainable_percent,
        "train_clips_per_s": report.train_clips_per_s,
        "seconds": report.seconds,
        "distributed": {"world_size": world, "adapter_sha256_per_rank": ranks_sha},
        "args": _jsonable(args),
    }
    (run_dir / "metrics.json").write_text(json.dumps(body, indent=2) + "\n")


def per_class(confusion: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """Per-class support, recall (accuracy of the class) and precision."""
    rows = []
    for i, label in enumerate(labels):
        support = int(confusion[i].sum())
        predicted = int(confusion[:, i].sum())
        rows.append(
            {
                "label": label,
                "support": support,
                "recall": confusion[i, i] / support if support else 0.0,
                "precision": confusion[i, i] / predicted if predicted else 0.0,
            }
        )
    return [
        {k: (float(v) if isinstance(v, np.floating) else v) for k, v in r.items()} for r in rows
    ]


def evaluate_dir(
    directory: Path,
    args: TrainArgs,
    split: str,
) -> tuple[EvalResult, AdapterCheckpoint, list[str]]:
    """The ``evaluate`` command: a checkpoint directory on a dataset split.

    Without ``--data-dir``, the run's own ``split.csv`` (written beside a checkpoint trained on a
    drawn split) is used.
    """
    device = resolve_device(args.device)
    backbone = load_backbone(args.backbone, device=device)
    ckpt = load_checkpoint(directory, backbone=backbone)
    if args.data_dir is None:
        if not (directory / "split.csv").is_file():
            raise ConfigError(f"--data-dir is required ({directory} has no split.csv)")
        args = replace(args, dataset="csv", data_dir=directory / "split.csv")
    splits = load_dataset(args.dataset, data_options(args))
    if isinstance(splits, AveSplits):
        from training.av_pipeline import evaluate_av_dir

        return evaluate_av_dir(ckpt, backbone, args, split, splits, device)
    if splits.labels != ckpt.manifest.labels:
        raise ConfigError(
            f"the dataset's labels {splits.labels[:5]}... differ from the checkpoint's "
            f"{ckpt.manifest.labels[:5]}...: evaluate on the dataset it was trained for"
        )
    cache_root = None if not args.feature_cache else (args.cache_dir or args.out / ".cache")
    feats = ckpt.manifest.features
    ds = ClipDataset(splits.split(split), feats, FeatureCache(cache_root, feats))
    if len(ds) == 0:
        raise ConfigError(f"split {split!r} of {args.dataset} is empty; choose train, val or test")
    res = evaluate_checkpoint(
        ckpt,
        backbone,
        ds,
        batch_size=args.eval_batch_size,
        device=device,
        precision=args.precision,
        progress=args.progress,
    )
    return res, ckpt, splits.labels
