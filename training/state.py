"""Resume files: ``state.safetensors`` (tensors) + ``state.json`` (everything else).

Holds the best-so-far adapter copy, the current adapter, the optimizer and grad-scaler state, the
history, the early-stop epoch and the warnings, written atomically after every epoch. Never
pickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from lookaside.errors import ConfigError
from training.loop import EpochLog, FitState

TENSORS, META = "state.safetensors", "state.json"
_STATE_KEYS = frozenset(
    {"epoch", "step", "best_accuracy", "best_epoch", "history", "optimizer", "scaler"}
    | {"stopped_at", "warnings"}
)
"""The keys of ``state.json`` that are :class:`FitState`; the rest is the caller's ``extra``."""


def save_state(
    directory: Path, state: FitState, current: dict[str, Tensor], extra: dict[str, Any]
) -> None:
    """Write the state of a run after an epoch (replaces the previous one atomically)."""
    tensors = {f"best.{k}": v for k, v in state.best_tensors.items()}
    tensors.update({f"cur.{k}": v for k, v in current.items()})
    opt_meta: dict[str, Any] = {"param_groups": [], "state": {}}
    if state.optimizer is not None:
        opt_meta["param_groups"] = state.optimizer["param_groups"]
        for pid, entry in state.optimizer["state"].items():
            scalars = {}
            for name, value in entry.items():
                if isinstance(value, Tensor):
                    tensors[f"opt.{pid}.{name}"] = value
                else:
                    scalars[name] = value
            opt_meta["state"][str(pid)] = scalars
    meta = {
        "epoch": state.epoch,
        "step": state.step,
        "best_accuracy": state.best_accuracy,
        "best_epoch": state.best_epoch,
        "history": [asdict(h) for h in state.history],
        "optimizer": opt_meta,
        "scaler": state.scaler or {},
        "stopped_at": state.stopped_at,
        "warnings": state.warnings,
        **extra,
    }
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / TENSORS)
        )
        (tmp / META).write_text(json.dumps(meta, indent=1))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_state(directory: Path) -> tuple[FitState, dict[str, Tensor], dict[str, Any]]:
    """``(state, current adapter tensors, extra)`` saved by :func:`save_state`."""
    if not (directory / TENSORS).is_file() or not (directory / META).is_file():
        raise ConfigError(
            f"--resume {directory}: expected {TENSORS} and {META} written by an earlier run "
            "(<out>/<name>/.state-v<version>)"
        )
    meta = json.loads((directory / META).read_text())
    tensors = load_file(str(directory / TENSORS))
    opt_state: dict[int, dict[str, Any]] = {}
    for pid, scalars in meta["optimizer"]["state"].items():
        opt_state[int(pid)] = dict(scalars)
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    state = FitState(
        epoch=meta["epoch"],
        step=meta["step"],
        best_accuracy=meta["best_accuracy"],
        best_epoch=meta["best_epoch"],
        best_tensors={k[5:]: v for k, v in tensors.items() if k.startswith("best.")},
        history=[EpochLog(**h) for h in meta["history"]],
        optimizer={"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]}
        if meta["optimizer"]["param_groups"]
        else None,
        scaler=meta["scaler"] or None,
        stopped_at=meta.get("stopped_at"),  # absent in files written before early stopping
        warnings=list(meta.get("warnings", [])),
    )
    current = {k[4:]: v for k, v in tensors.items() if k.startswith("cur.")}
    extra = {k: v for k, v in meta.items() if k not in _STATE_KEYS}
    return state, current, extra
