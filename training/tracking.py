"""Watching a run: the per-epoch line, the collapse warning, the early-stop note and TensorBoard.

:class:`Tracker` is the ``on_epoch_end`` side of :func:`training.loop.fit` (the loop knows
nothing of it): after every epoch it prints one line to stderr (above the tqdm bars when they
are drawn, a plain flushed line otherwise, so a log file shows the run as it goes), warns once
when validation loss sits at ``ln(classes)`` -- the loss of a uniform prediction -- and writes
the epoch's scalars to ``<run>/tensorboard/``. At the end it adds the exported checkpoint's
per-class PR curves, confusion matrix and the run's hparams with its final metrics. Rank 0 only.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm

from training import plots

if TYPE_CHECKING:
    from training.args import TrainArgs
    from training.loop import EpochLog, EvalResult, FitState

_hparams = cast(Callable[..., tuple[Any, Any, Any]], hparams)
"""torch's HParams summaries (untyped there); written straight into this run's event file,
not into the timestamped sub-run ``SummaryWriter.add_hparams`` opens."""

TENSORBOARD_DIR = "tensorboard"
"""The run directory's TensorBoard folder (``tensorboard --logdir runs`` shows every run)."""
COLLAPSE_EPOCHS = 3
"""Consecutive epochs validation loss must sit at ``ln(classes)`` before the warning."""
COLLAPSE_TOLERANCE = 0.02
"""How close counts as "at ``ln(classes)``", relative to it (10 classes: +-0.046 nats)."""
COLLAPSE_PREFIX = "collapse:"
"""How the collapse warning starts in metrics.json (one per run, also across a resume)."""


def epoch_line(log: EpochLog, epochs: int, state: FitState) -> str:
    """The one line an epoch prints."""
    return (
        f"epoch {log.epoch}/{epochs}: train loss {log.train_loss:.4f}, "
        f"val loss {log.val_loss:.4f}, val acc {100 * log.val_accuracy:.2f} % "
        f"(best {100 * state.best_accuracy:.2f} % at epoch {state.best_epoch}), "
        f"lr {log.lr:.2e}, {log.clips_per_s:.1f} clips/s, {log.seconds:.1f} s"
    )


def collapse_warning(history: Sequence[EpochLog], num_classes: int, lr: float) -> str | None:
    """The warning when the last :data:`COLLAPSE_EPOCHS` validation losses all sit within
    :data:`COLLAPSE_TOLERANCE` of ``ln(num_classes)`` (None otherwise)."""
    if num_classes < 2 or len(history) < COLLAPSE_EPOCHS:
        return None
    chance = math.log(num_classes)
    last = history[-COLLAPSE_EPOCHS:]
    if any(abs(h.val_loss - chance) > COLLAPSE_TOLERANCE * chance for h in last):
        return None
    head = (
        f"{COLLAPSE_PREFIX} validation loss stayed at ln({num_classes}) = {chance:.4f}, the loss "
        f"of a uniform prediction, for epochs {last[0].epoch}-{last[-1].epoch}: the adapter "
        "predicts no better than chance."
    )
    train = last[-1].train_loss
    if train < (1 - COLLAPSE_TOLERANCE) * chance:  # it fits the training clips, not validation
        return (
            f"{head} The training loss fell to {train:.4f}, so it fits the training clips "
            "only: check that validation holds the same kind of sound (labels, --frames, "
            "--compute-stats), or add data or augmentation (--specaug, --mixup)."
        )
    return (
        f"{head} The training loss sits there too ({train:.4f}): try a lower --lr (now {lr:g}, "
        f"e.g. {lr / 10:g}; too high a rate often ends at uniform), or more epochs if it is "
        "still warming up, and check that the labels match the clips (--frames, "
        "--compute-stats)."
    )


def note(line: str, bars: bool) -> None:
    """One line to stderr now: above the tqdm bars when they are drawn, else plain and flushed."""
    if bars:
        tqdm.write(line, file=sys.stderr)
    else:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def run_hparams(args: TrainArgs) -> dict[str, Any]:
    """The run's settings TensorBoard's HParams tab compares runs by (numbers stay numbers)."""
    picked = {
        "method": args.method,
        "dataset": args.dataset,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "optimizer": args.optimizer,
        "weight_decay": args.weight_decay,
        "mixup": args.mixup,
        "specaug": args.specaug,
        "early_stop": args.early_stop,
        "frames": args.frames,
        "seed": args.seed,
        "recipe": args.recipe,
        **{f"method.{k}": v for k, v in sorted(args.method_config.items())},
    }
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in picked.items()}


class Tracker:
    """Per-epoch output and the TensorBoard log of one run (see the module docstring)."""

    def __init__(
        self,
        args: TrainArgs,
        labels: Sequence[str],
        *,
        log_dir: Path | None,
        done_epochs: int,
        bars: bool,
        active: bool = True,
    ) -> None:
        """``log_dir`` None: no TensorBoard. ``done_epochs``: epochs a resumed run already logged
        (events from later steps, left by the interrupted run, are purged). ``active`` False:
        silent (ranks other than 0)."""
        self.args, self.labels, self.bars, self.active = args, list(labels), bars, active
        self.writer: SummaryWriter | None = None
        if active and log_dir is not None:
            self.writer = SummaryWriter(str(log_dir), purge_step=done_epochs + 1)

    def on_epoch(self, state: FitState) -> None:
        """Print the epoch's line (and a warning or early-stop note); log its scalars."""
        if not self.active or not state.history:
            return
        log = state.history[-1]
        note(epoch_line(log, self.args.epochs, state), self.bars)
        warning = collapse_warning(state.history, len(self.labels), self.args.lr)
        if warning and not any(w.startswith(COLLAPSE_PREFIX) for w in state.warnings):
            state.warnings.append(warning)
            note(f"warning: {warning.removeprefix(COLLAPSE_PREFIX).strip()}", self.bars)
        if state.stopped_at == log.epoch:
            note(
                f"early stop at epoch {log.epoch}: no better validation accuracy for "
                f"{log.epoch - state.best_epoch} epochs (--early-stop {self.args.early_stop}); "
                f"the best epoch, {state.best_epoch} ({100 * state.best_accuracy:.2f} %), "
                "is exported",
                self.bars,
            )
        if self.writer is not None:
            scalars = {
                "loss/train": log.train_loss,
                "loss/val": log.val_loss,
                "accuracy/val": log.val_accuracy,
                "lr": log.lr,
                "clips_per_s": log.clips_per_s,
            }
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, log.epoch)
            self.writer.flush()  # visible to a running `tensorboard` now, not in two minutes

    def on_end(
        self, state: FitState, result: EvalResult, split: str, metrics: Mapping[str, float]
    ) -> None:
        """The exported checkpoint on its final split: per-class PR curves (one-vs-rest on the
        softmax scores), the confusion matrix, and the hparams with the final metrics."""
        if self.writer is None:
            return
        step = state.epoch
        if result.scores is not None and result.labels is not None:
            for c, label in enumerate(self.labels):
                self.writer.add_pr_curve(
                    f"pr_curve/{label}", result.labels == c, result.scores[:, c], step
                )
        title = f"{self.args.method}, {split} split"
        figure = plots.confusion_figure(result.confusion, self.labels, title)
        self.writer.add_figure("confusion_matrix", figure, step, close=True)
        final = {f"final/{k}": float(v) for k, v in metrics.items()}
        file_writer: Any = self.writer._get_file_writer()  # type: ignore[no-untyped-call]
        for summary in _hparams(run_hparams(self.args), final):  # experiment, start, end
            file_writer.add_summary(summary)
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (also after an error)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def only_tensorboard(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds nothing but the TensorBoard folder (an interrupted run's)."""
    return {p.name for p in run_dir.iterdir()} <= {TENSORBOARD_DIR}


@contextmanager
def tensorboard_aside(run_dir: Path) -> Iterator[None]:
    """Move ``run_dir/tensorboard`` beside the run while the checkpoint is saved (the save
    writes its directory atomically and needs it empty), then back in."""
    logs = run_dir / TENSORBOARD_DIR
    if not logs.is_dir():
        yield
        return
    aside = run_dir.parent / f".{run_dir.name}.{TENSORBOARD_DIR}"
    os.replace(logs, aside)
    try:
        yield
    finally:
        run_dir.mkdir(parents=True, exist_ok=True)
        os.replace(aside, logs)
