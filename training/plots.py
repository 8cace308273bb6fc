"""Training curve and confusion matrix as PNGs (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from training.loop import EpochLog  # noqa: E402


def training_curve(history: Sequence[EpochLog], path: Path, title: str) -> None:
    """Loss (train, val) and validation accuracy per epoch."""
    epochs = [h.epoch for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h.train_loss for h in history], marker="o", label="train")
    ax_loss.plot(epochs, [h.val_loss for h in history], marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * h.val_accuracy for h in history], marker="o", color="C2")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="validation accuracy", ylim=(0, 100))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_matrix(confusion: np.ndarray, labels: Sequence[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (true label per row) as a PNG."""
    fig = confusion_figure(confusion, labels, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_figure(confusion: np.ndarray, labels: Sequence[str], title: str) -> Figure:
    """The confusion matrix figure (the PNG and TensorBoard's image); labels up to 60 classes."""
    totals = confusion.sum(axis=1, keepdims=True).clip(min=1)
    size = max(4.0, min(16.0, 0.3 * len(labels) + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(confusion / totals, vmin=0, vmax=1, cmap="Blues")
    if len(labels) <= 60:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
