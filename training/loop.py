"""One training loop for every adapter method: ``fit`` and ``evaluate``.

Shaped like nanoGPT's ``train.py`` but as functions (STYLE §12): per step, set the learning rate
from :func:`get_lr` -> autocast forward -> loss -> (scaled) backward -> clip -> step ->
``zero_grad(set_to_none=True)``; per epoch, :func:`evaluate` under ``inference_mode`` and keep a
*copy* of the best adapter (never a live reference: docs/design.md §5). The method is only the
adapter in the bank; the optimizer sees exactly ``bank.trainable_parameters(adapter_id)``, so the
frozen backbone cannot change. Multi-GPU: under ``torchrun`` the adapter module (bank only, no
backbone) is wrapped in DistributedDataParallel, so only adapter gradients are all-reduced.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.amp.grad_scaler import GradScaler
from tqdm import tqdm

from lookaside.bank import HEAD_PREFIX, AdapterBank
from lookaside.errors import ConfigError
from lookaside.model import MultiAdapterModel
from lookaside.tasks import CLIP
from training.augment import SpecAugment, mixup

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class LoopConfig:
    """What the loop itself needs (the CLI's TrainArgs carry the rest)."""

    epochs: int
    """Passes over the training set."""
    lr: float
    """Peak learning rate (reached after warm-up, then cosine to ``min_lr_ratio * lr``)."""
    optimizer: Literal["adamw", "adam"] = "adamw"
    """AdamW (decoupled weight decay) or Adam (the LoAA paper's ESC-50 / SPC-2 choice)."""
    weight_decay: float = 0.01
    """Weight decay; AdamW decays matrices only (nanoGPT's rule: no decay on biases / norms)."""
    warmup_epochs: float = 1.0
    """Linear warm-up length in epochs (fractions allowed)."""
    min_lr_ratio: float = 0.01
    """Final learning rate as a fraction of ``lr``."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables clipping)."""
    mixup_alpha: float = 0.0
    """Beta(alpha, alpha) mixup on inputs and one-hot targets; 0 disables it."""
    specaug: SpecAugment | None = None
    """Frequency / time masking of training inputs (spectrogram inputs only)."""
    seed: int = 0
    """Seeds shuffling, mixup and masks (per epoch, so a resumed run draws the same)."""
    precision: Precision = "fp32"
    """Autocast dtype; fp16 uses a GradScaler (CUDA only)."""
    progress: bool = True
    """Draw tqdm bars (when stderr is a terminal); the per-epoch lines are the caller's
    ``on_epoch_end`` (:class:`training.tracking.Tracker`), printed either way."""
    early_stop: int = 0
    """Stop after this many epochs without a better validation accuracy (0: run every epoch)."""


@dataclass
class EpochLog:
    """One line of the training curve."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    clips_per_s: float
    seconds: float


@dataclass
class EvalResult:
    """Metrics of one pass over a split."""

    loss: float
    accuracy: float
    """Top-1, as a fraction."""
    mean_ap: float
    """Mean over classes of average precision (one-vs-rest on the softmax scores)."""
    confusion: np.ndarray
    """``[true, predicted]`` counts."""
    count: int
    scores: np.ndarray | None = None
    """``[clips, classes]`` softmax scores, kept only when asked (``keep_scores``: PR curves)."""
    labels: np.ndarray | None = None
    """``[clips]`` true labels, beside ``scores``."""


@dataclass
class FitState:
    """Everything needed to resume: progress, optimizer, best copy so far."""

    epoch: int = 0
    """Epochs completed."""
    step: int = 0
    """Optimizer steps taken."""
    best_accuracy: float = -1.0
    best_epoch: int = 0
    best_tensors: dict[str, Tensor] = field(default_factory=dict)
    history: list[EpochLog] = field(default_factory=list)
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    stopped_at: int | None = None
    """The epoch early stopping ended the run at (a resumed run that was stopped stays stopped)."""
    warnings: list[str] = field(default_factory=list)
    """Warnings raised while training (the collapse warning), kept for metrics.json."""


def get_lr(step: int, total: int, warmup: int, cfg: LoopConfig) -> float:
    """Linear warm-up to ``cfg.lr``, then cosine decay to ``cfg.min_lr_ratio * cfg.lr``."""
    if warmup and step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


class AdapterForward(nn.Module):
    """``spec -> logits`` of one adapter. Registers only the bank, so DDP and ``parameters()``
    see adapter tensors alone; the backbone is reached through the model, unregistered."""

    def __init__(self, model: MultiAdapterModel, adapter_id: str) -> None:
        super().__init__()
        self.bank = model.bank
        self.adapter_id = adapter_id
        object.__setattr__(self, "_model", model)

    def forward(self, spec: Tensor) -> Tensor:
        model: MultiAdapterModel = self.__dict__["_model"]
        return CLIP.logits(model, (spec,), self.adapter_id)


class PooledHead(nn.Module):
    """The head alone on cached pooled tokens (linear probe: the backbone runs once per clip)."""

    def __init__(self, bank: AdapterBank, adapter_id: str) -> None:
        super().__init__()
        self.head = bank.head(adapter_id)

    def forward(self, pooled: Tensor) -> Tensor:
        logits: Tensor = self.head.fc(self.head.norm(pooled.to(self.head.fc.weight.dtype)))
        return logits


def configure_optimizer(params: list[nn.Parameter], cfg: LoopConfig) -> torch.optim.Optimizer:
    """AdamW with decay on matrices only, or Adam with L2 ``weight_decay`` on all."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """Autocast context for ``precision`` (disabled for fp32)."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")


def fit(
    module: nn.Module,
    params: list[nn.Parameter],
    train_loader: Iterable[tuple[Tensor, Tensor]],
    val_loader: Iterable[tuple[Tensor, Tensor]],
    cfg: LoopConfig,
    *,
    num_classes: int,
    device: torch.device,
    snapshot: Callable[[], dict[str, Tensor]],
    state: FitState | None = None,
    on_epoch_end: Callable[[FitState], None] | None = None,
    set_epoch: Callable[[int], None] | None = None,
) -> FitState:
    """Train ``params`` of ``module`` (spectrogram or pooled input -> logits); return the state.

    Args:
        module: maps a batch of inputs to ``[B, classes]`` logits (may be DDP-wrapped).
        params: exactly the tensors to train (``bank.trainable_parameters(adapter_id)``).
        snapshot: detached *copies* of the adapter's tensors (the best epoch is kept this way).
        state: resume from this state (``epoch`` epochs done).
        on_epoch_end: called with the state after every epoch (prints its line, saves resume
            files); ``state.stopped_at`` is set when early stopping ends the run there (under
            torchrun on every rank at once, by rank 0's validation).
        set_epoch: called before each epoch (DistributedSampler.set_epoch).
    """
    state = state or FitState()
    optimizer = configure_optimizer(params, cfg)
    scaler = GradScaler(device.type, enabled=cfg.precision == "fp16")
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
    if state.scaler is not None:
        scaler.load_state_dict(state.scaler)
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    sched = _Schedule(cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch))
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if state.stopped_at is not None:
            break
        if set_epoch is not None:
            set_epoch(epoch)
        train_loss, seen, lr, seconds = _train_epoch(
            module,
            params,
            optimizer,
            scaler,
            train_loader,
            cfg,
            state,
            sched,
            epoch,
            num_classes,
            device,
        )
        val = evaluate(
            module, val_loader, device=device, precision=cfg.precision, num_classes=num_classes
        )
        log = EpochLog(epoch, train_loss, val.loss, val.accuracy, lr, seen / seconds, seconds)
        state.history.append(log)
        if val.accuracy > state.best_accuracy:  # ties keep the earlier epoch
            state.best_accuracy, state.best_epoch = val.accuracy, epoch
            state.best_tensors = snapshot()
        state.epoch = epoch
        state.optimizer = optimizer.state_dict()
        state.scaler = scaler.state_dict()
        if _stops(state, epoch, cfg, device):
            state.stopped_at = epoch
        if on_epoch_end is not None:
            on_epoch_end(state)
    return state


def _stops(state: FitState, epoch: int, cfg: LoopConfig, device: torch.device) -> bool:
    """Whether early stopping ends the run after ``epoch`` (every rank gets the same answer)."""
    if not cfg.early_stop or epoch >= cfg.epochs:  # the same on every rank: all or none agree
        return False
    return _agreed(epoch - state.best_epoch >= cfg.early_stop, device)


def _agreed(stop: bool, device: torch.device) -> bool:
    """Rank 0's stop decision on every rank: each rank validates on its own, and a rank that
    broke out alone would leave the others blocked in DDP's next all-reduce. Rank 0's, since
    its best epoch is the one exported."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return stop
    flag = torch.tensor([int(stop)], device=device if device.type == "cuda" else "cpu")
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def bars(progress: bool) -> bool:
    """Whether to draw tqdm bars: asked for and stderr is a terminal (a log file or pipe would
    collect every carriage-return frame of a bar; it gets the per-epoch lines instead)."""
    return progress and sys.stderr.isatty()


@dataclass(frozen=True)
class _Schedule:
    """Optimizer steps in the whole run and in the warm-up (for :func:`get_lr`)."""

    total: int
    warmup: int


def _train_epoch(
    module: nn.Module,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scaler: GradScaler,
    train_loader: Iterable[tuple[Tensor, Tensor]],
    cfg: LoopConfig,
    state: FitState,
    sched: _Schedule,
    epoch: int,
    num_classes: int,
    device: torch.device,
) -> tuple[float, int, float, float]:
    """One pass over the training set: (mean loss, examples seen, last lr, seconds)."""
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # mixup + masks
    torch.manual_seed(cfg.seed * 100_003 + epoch)  # SpecAugment draws from the global RNG
    module.train()
    t0, seen, loss_sum = time.perf_counter(), 0, 0.0
    bar = tqdm(
        train_loader,
        desc=f"epoch {epoch}/{cfg.epochs}",
        unit="batch",
        disable=not bars(cfg.progress),
        leave=False,
    )
    lr = cfg.lr
    for x, y in bar:
        lr = get_lr(state.step, sched.total, sched.warmup, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = _step(module, params, optimizer, scaler, x, y, cfg, num_classes, device, gen)
        state.step += 1
        seen += x.shape[0]
        loss_sum += loss * x.shape[0]
        elapsed = time.perf_counter() - t0
        bar.set_postfix(
            loss=f"{loss_sum / seen:.4f}",
            lr=f"{lr:.2e}",
            clips_s=f"{seen / max(elapsed, 1e-9):.1f}",
        )
    seconds = max(time.perf_counter() - t0, 1e-9)
    return loss_sum / max(seen, 1), seen, lr, seconds


def _step(
    module: nn.Module,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scaler: GradScaler,
    x: Tensor,
    y: Tensor,
    cfg: LoopConfig,
    num_classes: int,
    device: torch.device,
    gen: torch.Generator,
) -> float:
    """One optimizer step (augment -> autocast forward -> scaled backward -> clip -> step)."""
    # non_blocking pairs with pinned host memory: the copy overlaps the previous step's compute.
    x = x.to(device, non_blocking=True)
    target = F.one_hot(y.to(device, non_blocking=True), num_classes).float()
    if cfg.specaug is not None and x.dim() == 3:  # spectrograms only, not cached pooled tokens
        x = cfg.specaug.train()(x)
    if cfg.mixup_alpha > 0:
        x, target, _ = mixup(x, target, cfg.mixup_alpha, generator=gen)
    with autocast(device, cfg.precision):
        logits = module(x)
    # Soft-target cross-entropy in fp32 (mixup targets are not one-hot).
    loss = -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
    scaled: Tensor = scaler.scale(loss)
    torch.autograd.backward(scaled)
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())  # a host sync per step: cheap next to a ViT forward


def evaluate(
    module: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    device: torch.device,
    precision: Precision = "fp32",
    num_classes: int,
    progress: bool = False,
    keep_scores: bool = False,
) -> EvalResult:
    """Loss, top-1, mAP and confusion matrix of ``module`` on ``loader`` (no augmentation);
    with ``keep_scores`` also every clip's softmax scores and label (the same numbers)."""
    was_training = module.training
    module.eval()
    scores, labels, loss_sum = [], [], 0.0
    batches = tqdm(loader, desc="evaluate", unit="batch", disable=not bars(progress), leave=False)
    with torch.inference_mode():
        for x, y in batches:
            with autocast(device, precision):
                logits = module(x.to(device, non_blocking=True)).float()
            y = y.to(device)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            scores.append(logits.softmax(-1).cpu().double())
            labels.append(y.cpu())
    module.train(was_training)
    if not scores:
        raise ConfigError("cannot evaluate on an empty split")
    s, t = torch.cat(scores).numpy(), torch.cat(labels).numpy()
    pred = s.argmax(1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (t, pred), 1)
    return EvalResult(
        loss=loss_sum / len(t),
        accuracy=float((pred == t).sum()) / len(t),
        mean_ap=mean_average_precision(s, t),
        confusion=confusion,
        count=len(t),
        scores=s.astype(np.float32) if keep_scores else None,
        labels=t if keep_scores else None,
    )


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes present in ``labels`` of one-vs-rest average precision."""
    aps = []
    for c in range(scores.shape[1]):
        positive = labels == c
        if not positive.any():
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = positive[order]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float(precision[hits].mean()))
    return float(np.mean(aps)) if aps else 0.0


def load_adapter_tensors(bank: AdapterBank, adapter_id: str, tensors: Mapping[str, Tensor]) -> None:
    """Write ``tensors`` (as :meth:`AdapterBank.adapter_tensors` returns them) back into the
    adapter's slot and head: restores the best epoch or a resumed run."""
    entry = bank.entries[adapter_id]
    stack = bank.stack_of(adapter_id)
    with torch.no_grad():
        if stack is not None:
            stack.load_slot(
                entry.slot, {k: v for k, v in tensors.items() if not k.startswith(HEAD_PREFIX)}
            )
        bank.head(adapter_id).load_state_dict(
            {
                k.removeprefix(HEAD_PREFIX): v
                for k, v in tensors.items()
                if k.startswith(HEAD_PREFIX)
            }
        )
