"""The ``train`` and ``evaluate`` commands as functions (the CLI only parses).

``train(args)`` = :func:`prepare` (device, dataset, its task kind, features, the run's directory)
-> :func:`build` (backbone + one trainable adapter, the kind's loaders and module) ->
:func:`fit_run` (:func:`~training.loop.fit`; each epoch the :class:`~training.tracking.Tracker`'s
line and TensorBoard scalars, then the resume files) -> :func:`export` (frozen
check, best epoch restored, checkpoint scored in a *fresh* bank by :func:`evaluate_checkpoint`, the
function ``evaluate`` runs, so the manifest's number is the number ``evaluate`` prints) ->
:func:`report` (``<out>/<name>/<run>/`` with the reports beside it). The dataset's task kind
(:mod:`training.tasks`) supplies the loaders, the module and the scored batches; nothing here
asks which kind it is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from lookaside.adapters import HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.backbones import load_backbone
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.errors import ConfigError
from lookaside.model import MultiAdapterModel
from training.args import TrainArgs
from training.augment import SpecAugment
from training.datasets import DataOptions, Splits, load_dataset
from training.export import check_name, checkpoint_of, make_bank, next_run
from training.frozen import check_frozen, tensor_digests
from training.loop import (
    EvalResult,
    FitState,
    LoopConfig,
    bars,
    evaluate,
    fit,
    load_adapter_tensors,
)
from training.reports import TrainReport, jsonable, rank_hashes, write_reports
from training.state import load_state, save_state
from training.tasks import RunSetup, TrainData, TrainingKind, kind_of_dataset
from training.tasks.base import Batches
from training.tracking import (
    TENSORBOARD_DIR,
    Tracker,
    note,
    only_tensorboard,
    tensorboard_aside,
)

ADAPTER_ID = "train"

__all__ = ["FitState", "TrainReport", "evaluate_checkpoint", "train"]


@dataclass
class Run:
    """One training output directory ``<out>/<name>/<number>/`` (a *run*; the store numbers its
    own versions on upload) and what resumes it."""

    name: str
    number: int
    dir: Path
    state: FitState | None
    current: dict[str, Tensor] | None


@dataclass
class Built:
    """The model being trained and what :func:`fit` needs around it."""

    backbone: VisionTransformer
    model: MultiAdapterModel
    params: list[torch.nn.Parameter]
    data: TrainData
    frozen: dict[str, str]
    """Per-tensor digests of the backbone before training (:mod:`training.frozen`)."""


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


def data_options(args: TrainArgs) -> DataOptions:
    """The loader options of ``args``."""
    if args.data_dir is None:
        raise ConfigError("--data-dir is required: the dataset's root folder (or CSV file)")
    return DataOptions(
        root=args.data_dir,
        fold=args.fold,
        num_folds=args.num_folds,
        group_by=args.group_by,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        audio=args.audio,
        sample_rate=args.h5_sample_rate,
    )


def train(args: TrainArgs) -> TrainReport:
    """Run one training job end to end (see the module docstring)."""
    started = time.perf_counter()
    setup, kind, run = prepare(args)
    built = build(setup, kind, run)
    with tracker_of(setup, run) as tracker:  # closes the event file on errors too
        state = fit_run(setup, run, built, tracker)
        ckpt, results, final, ranks_sha = export(setup, kind, run, built, state)
        tracker.on_end(state, results[final], final, ckpt.manifest.metrics)
    return report(setup, run, ckpt, state, results, final, ranks_sha, started)


def tracker_of(setup: RunSetup, run: Run) -> Tracker:
    """Per-epoch lines and TensorBoard (``<run>/tensorboard/``) on rank 0."""
    args = setup.args
    return Tracker(
        args,
        setup.splits.labels,
        log_dir=run.dir / TENSORBOARD_DIR if args.tensorboard else None,
        done_epochs=run.state.epoch if run.state else 0,
        bars=bars(args.progress),
        active=setup.rank == 0,
    )


def prepare(args: TrainArgs) -> tuple[RunSetup, TrainingKind, Run]:
    """Device, dataset and its task kind, distributed group, feature config, run directory."""
    device = resolve_device(args.device)
    if args.precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    splits = load_dataset(args.dataset, data_options(args))
    kind = kind_of_dataset(args.dataset)
    kind.check_world(int(os.environ.get("WORLD_SIZE", "1")))
    rank, world = _init_distributed(device)
    progress = args.progress and rank == 0
    features = kind.features(args, splits, progress)
    run = _open_run(args, world)
    return RunSetup(args, device, rank, world, progress, splits, features), kind, run


def build(setup: RunSetup, kind: TrainingKind, run: Run) -> Built:
    """The frozen backbone with one fresh (or resumed) adapter, and the kind's loaders."""
    args = setup.args
    torch.manual_seed(args.seed)
    backbone = load_backbone(args.backbone, device=setup.device)
    kind.check_backbone(backbone)
    frozen = tensor_digests(backbone)
    model, params = _model(args, backbone, len(setup.splits.labels), run.current, setup.rank == 0)
    data = kind.train_data(setup, model, ADAPTER_ID)
    if setup.world > 1:
        device = setup.device
        data.module = DistributedDataParallel(
            data.module, device_ids=[device.index] if device.type == "cuda" else None
        )
    return Built(backbone, model, params, data, frozen)


def fit_run(setup: RunSetup, run: Run, built: Built, tracker: Tracker) -> FitState:
    """:func:`~training.loop.fit`: after every epoch the tracker's line and log, then the resume
    files (rank 0)."""
    args, bank, data = setup.args, built.model.bank, built.data
    state_dir = args.out / run.name / f".state-v{run.number}"

    def snapshot() -> dict[str, Tensor]:
        return bank.adapter_tensors(ADAPTER_ID)

    def on_epoch_end(s: FitState) -> None:
        tracker.on_epoch(s)  # before saving: the state then carries its warnings
        if setup.rank == 0:
            save_state(state_dir, s, snapshot(), {"version": run.number, "args": jsonable(args)})

    def set_epoch(epoch: int) -> None:
        if data.sampler is not None:
            data.sampler.set_epoch(epoch)
        else:  # a fresh, seeded shuffle order per epoch (resumed runs draw the same orders)
            gen = getattr(data.train, "generator", None)
            if gen is not None:
                gen.manual_seed(args.seed * 100_003 + epoch)

    return fit(
        data.module,
        built.params,
        data.train,
        data.val,
        _loop_config(args, setup.progress),
        num_classes=len(setup.splits.labels),
        device=setup.device,
        snapshot=snapshot,
        state=run.state,
        on_epoch_end=on_epoch_end,
        set_epoch=set_epoch,
    )


def export(
    setup: RunSetup, kind: TrainingKind, run: Run, built: Built, state: FitState
) -> tuple[AdapterCheckpoint, dict[str, EvalResult], str, list[str]]:
    """Frozen check, the best epoch as a checkpoint with its scores in the manifest."""
    check_frozen(built.backbone, built.frozen)
    bank = built.model.bank
    ranks_sha = rank_hashes(bank.adapter_tensors(ADAPTER_ID), setup.world)
    load_adapter_tensors(bank, ADAPTER_ID, state.best_tensors)
    ckpt = checkpoint_of(
        bank,
        ADAPTER_ID,
        backbone=built.backbone,
        name=run.name,
        version=run.number,
        task=setup.args.task or setup.splits.task,
        labels=setup.splits.labels,
        features=setup.features,
    )
    metrics, results, final = _score(setup, kind, ckpt, built.backbone)
    ckpt.manifest = ckpt.manifest.model_copy(update={"metrics": metrics})
    return ckpt, results, final, ranks_sha


def report(
    setup: RunSetup,
    run: Run,
    ckpt: AdapterCheckpoint,
    state: FitState,
    results: dict[str, EvalResult],
    final: str,
    ranks_sha: list[str],
    started: float,
) -> TrainReport:
    """The checkpoint and its reports written (rank 0), and the summary the CLI prints."""
    summary = TrainReport(
        run_dir=run.dir,
        metrics=ckpt.manifest.metrics,
        best_epoch=state.best_epoch,
        trainable_params=ckpt.manifest.trainable_params,
        trainable_percent=ckpt.manifest.trainable_percent,
        train_clips_per_s=float(np.mean([h.clips_per_s for h in state.history]))
        if state.history
        else 0.0,
        seconds=time.perf_counter() - started,
        stopped_at_epoch=state.stopped_at,
    )
    if setup.rank == 0:
        with tensorboard_aside(run.dir):
            ckpt.save(run.dir)
        args, world = setup.args, setup.world
        write_reports(run.dir, args, setup.splits, state, results, final, summary, ranks_sha, world)
    if setup.world > 1:
        dist.barrier()
    return summary


def evaluate_checkpoint(
    kind: TrainingKind,
    ckpt: AdapterCheckpoint,
    backbone: VisionTransformer,
    batches: Batches,
    splits: Splits,
    *,
    device: torch.device,
    precision: str = "fp32",
    progress: bool = False,
    keep_scores: bool = False,
) -> EvalResult:
    """A checkpoint in a fresh (serving) bank, scored on ``batches``: what ``evaluate`` runs
    (``keep_scores``: with every clip's scores, see :func:`~training.loop.evaluate`)."""
    bank = make_bank(backbone, trainable=False)
    adapter_id = ckpt.load_into(bank)
    model = MultiAdapterModel(backbone, bank)
    return evaluate(
        kind.eval_module(model, adapter_id, ckpt.manifest.features, splits),
        batches,
        device=device,
        precision=precision,  # type: ignore[arg-type]
        num_classes=len(ckpt.manifest.labels),
        progress=progress,
        keep_scores=keep_scores,
    )


def _init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the torchrun group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _open_run(args: TrainArgs, world: int) -> Run:
    """The run to write: the resumed run's, ``--version``, or the next free number (rank 0's)."""
    name = check_name(args.adapter_name)
    state, current = None, None
    if args.resume is not None:
        state, current, extra = load_state(args.resume)
        number = int(extra["version"])
    else:
        number = args.version or next_run(args.out / name)
    if world > 1:  # every rank writes to the run rank 0 chose
        box = [number]
        dist.broadcast_object_list(box, src=0)
        number = int(box[0])
    run_dir = args.out / name / str(number)
    if run_dir.exists() and not only_tensorboard(run_dir):
        raise ConfigError(f"{run_dir} already holds a checkpoint; pick another --version")
    return Run(name, number, run_dir, state, current)


def _model(
    args: TrainArgs,
    backbone: VisionTransformer,
    num_classes: int,
    current: dict[str, Tensor] | None,
    verbose: bool,
) -> tuple[MultiAdapterModel, list[torch.nn.Parameter]]:
    """The backbone with one fresh (or resumed) trainable adapter, and its parameters."""
    bank = make_bank(backbone, trainable=True)
    head_cfg = HeadConfig(num_classes=num_classes, pool=args.pool)
    bank.add(ADAPTER_ID, args.method, args.adapter_config(), head_cfg, seed=args.seed)
    if current:
        load_adapter_tensors(bank, ADAPTER_ID, current)
    params = bank.trainable_parameters(ADAPTER_ID)
    n = sum(p.numel() for p in params)
    if verbose:
        note(
            f"{args.method}: {n:,} trainable parameters ({100 * n / backbone.num_params:.3f} % "
            f"of the backbone's {backbone.num_params:,}, which stay frozen)",
            bars(args.progress),
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
        early_stop=args.early_stop,
    )


def _score(
    setup: RunSetup, kind: TrainingKind, ckpt: AdapterCheckpoint, backbone: VisionTransformer
) -> tuple[dict[str, float], dict[str, EvalResult], str]:
    """The checkpoint scored on val (and test) exactly as ``evaluate`` does it; the final split
    (test when there is one, else val) keeps its clips' scores for the tracker's PR curves."""
    args, splits = setup.args, setup.splits
    batches = {
        split: b
        for split in ("val", "test")
        if (b := kind.eval_batches(args, splits, split, setup.features, backbone)) is not None
    }
    if not batches:
        raise ConfigError(f"{splits.name} has no val or test split to score the checkpoint on")
    final = "test" if "test" in batches else "val"
    metrics: dict[str, float] = {}
    results: dict[str, EvalResult] = {}
    for split, split_batches in batches.items():
        results[split] = evaluate_checkpoint(
            kind,
            ckpt,
            backbone,
            split_batches,
            splits,
            device=setup.device,
            precision=args.precision,
            progress=setup.progress,
            keep_scores=split == final and args.tensorboard and setup.rank == 0,
        )
        metrics.update(kind.split_metrics(splits, split, results[split]))
    metrics["accuracy"] = results[final].accuracy
    return metrics, results, final
