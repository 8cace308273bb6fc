"""Training arguments as one validated dataclass, and the method options generated from the
registered adapter configs (litgpt ``args.py`` style: the CLI is built from these, not by hand).

Precedence, lowest first: dataclass defaults < ``--recipe`` < ``--config FILE.yaml`` < options
given on the command line. Method options (``--rank``, ``--kernels`` ...) are every field of every
config class in :data:`lookaside.adapters.ADAPTERS`; one only applies to methods that have it.
"""

from __future__ import annotations

import ast
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from lookaside.adapters import ADAPTERS, AdapterConfig, get_method
from lookaside.backbones import DEFAULT_BACKBONE
from lookaside.errors import ConfigError
from training.datasets import DATASETS
from training.tasks import check_method, kind_of_dataset

TRAIN_FIELDS_ORDER = ("method", "dataset", "data_dir")


@dataclass
class TrainArgs:
    """Everything ``train`` needs; checked in ``__post_init__`` with messages naming the fix."""

    method: str = "loaa"
    """Adapter method (``methods`` lists them)."""
    method_config: dict[str, Any] = field(default_factory=dict)
    """The method's config fields, e.g. ``{"rank": 36, "kernels": "attn:T,ffn:F"}``."""
    dataset: str = "folder"
    """Dataset layout: esc50, esc10, speech_commands, epic_sounds, folder, csv, ave
    (audio-visual)."""
    data_dir: Path | None = None
    """Dataset root (the CSV file for ``csv``)."""
    fold: int | None = None
    """Test fold: one of the dataset's own folds (ESC-50: 1-5; a CSV fold column: any integers it
    holds), or of a seeded K-fold drawn over a folder / CSV without folds (1..--num-folds). Refused
    where the dataset fixes its test split; the loader checks the number."""
    num_folds: int | None = None
    """K of the K-fold drawn over a folder / CSV without folds of its own (the test fold is one of
    1..K); 5 when not given. Only with a test fold (train) or in crossval; refused where the
    dataset has its own folds or fixes its test split."""
    group_by: str | None = None
    """Keep each group (speaker, recording session) inside one split of a drawn split: a CSV
    column, or a regular expression over each clip's path (its first group, else the whole match).
    Default: the CSV's ``speaker`` column, or the speaker hash of Speech-Commands-style file names
    (``<speaker>_nohash_<n>.wav``) when every clip has one; ``none``: by label only."""
    val_fraction: float = 0.1
    """Share of training clips held out for validation when the layout has no val split."""
    test_fraction: float = 0.0
    """Share held out for testing when a generic layout has no test split."""
    audio: Path | None = None
    """EPIC-SOUNDS audio (HDF5 file or folder of per-video files)."""
    h5_sample_rate: int = 24_000
    """Sample rate of HDF5 audio."""
    backbone: str = DEFAULT_BACKBONE
    """Frozen backbone: timm:<name>, hf:<repo>, file:<path.safetensors> or random:<preset>; the
    same default as lookaside-serve, so a server started with defaults serves what this trains
    (paper recipes set their paper's backbone)."""
    out: Path = Path("runs")
    """Output root: the checkpoint goes to <out>/<name>/<version>/."""
    name: str | None = None
    """Adapter name (default: the dataset name)."""
    version: int | None = None
    """Version number (default: one more than the largest in <out>/<name>/)."""
    task: str | None = None
    """Free-text task for the manifest (default: the dataset's)."""
    epochs: int = 25
    """Passes over the training set."""
    lr: float = 5e-4
    """Peak learning rate."""
    batch_size: int = 32
    """Clips per optimizer step (per process under torchrun)."""
    eval_batch_size: int = 32
    """Clips per evaluation batch (the same in train and evaluate, so numbers match)."""
    optimizer: Literal["adamw", "adam"] = "adamw"
    """adamw or adam."""
    weight_decay: float = 0.01
    """Weight decay."""
    warmup_epochs: float = 1.0
    """Linear warm-up, in epochs."""
    grad_clip: float = 1.0
    """Max gradient norm (0: off)."""
    early_stop: int = 0
    """Stop after this many epochs without a better validation accuracy (0: train every epoch);
    the best epoch is still the one exported."""
    mixup: float = 0.0
    """Mixup Beta alpha (0: off)."""
    specaug: bool = False
    """Frequency and time masking of training inputs."""
    freq_mask: int = 48
    """Largest frequency mask (mel bins)."""
    time_mask: int = 96
    """Largest time mask (frames)."""
    pool: Literal["cls", "mean"] = "cls"
    """Head pooling: prefix tokens (cls) or patch tokens (mean)."""
    frames: int | None = None
    """Frames per window (default: the dataset's)."""
    window_hop: int | None = None
    """Frames between the starts of a long clip's windows when served (timelines, streaming);
    recorded in the checkpoint (default: the window length, no overlap)."""
    mean: float | None = None
    """Feature normalisation mean (default: the dataset's, AudioSet's)."""
    std: float | None = None
    """Feature normalisation std."""
    compute_stats: bool = False
    """Measure mean / std on the training split and use them."""
    seed: int = 0
    """Seeds the adapter init, splits, shuffling and augmentation."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (cuda when available)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision (fp16 with a grad scaler, CUDA only)."""
    workers: int = 0
    """DataLoader worker processes."""
    cache_dir: Path | None = None
    """Feature cache (default: <out>/.cache)."""
    feature_cache: bool = True
    """Keep each clip's fbank on disk (--no-feature-cache decodes every clip every epoch)."""
    token_cache: bool = True
    """Linear probe: cache the backbone's pooled tokens and train the head on them."""
    resume: Path | None = None
    """Resume from a run's state directory (<out>/<name>/.state-v<version>)."""
    recipe: str | None = None
    """The recipe these arguments came from (recorded in metrics.json)."""
    progress: bool = True
    """tqdm bars when stderr is a terminal (--no-progress turns them off); the per-epoch lines
    (loss, accuracy, lr, clips/s, best so far) go to stderr either way."""
    tensorboard: bool = True
    """Write TensorBoard events (scalars, PR curves, confusion images, hparams) to
    <out>/<name>/<version>/tensorboard/."""

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(
                f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}"
            )
        self._check_modality()
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be >= 1"),
            (
                0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1,
                "--val-fraction and --test-fraction must be in [0, 1)",
            ),
            (
                self.val_fraction + self.test_fraction < 1,
                f"--val-fraction {self.val_fraction} + --test-fraction {self.test_fraction} "
                "leaves no training clips; lower them so their sum is below 1",
            ),
            (self.mixup >= 0, "--mixup (Beta alpha) must be >= 0"),
            (self.workers >= 0, "--workers must be >= 0"),
            (self.frames is None or self.frames >= 16, "--frames must be >= 16 (one patch)"),
            (self.num_folds is None or self.num_folds >= 2, "--num-folds must be at least 2"),
            (self.early_stop >= 0, "--early-stop must be >= 0 (0: off)"),
            (self.window_hop is None or self.window_hop >= 1, "--window-hop must be >= 1 frame"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.method_config = dict(self.method_config)
        self.adapter_config()  # validate now, with the method's own message

    def _check_modality(self) -> None:
        """The method must serve the dataset's task kind, and the options must apply to it."""
        check_method(self.method, self.dataset)
        kind_of_dataset(self.dataset).check_args(self)

    def adapter_config(self) -> AdapterConfig:
        """The method's typed config."""
        method = get_method(self.method)
        try:
            return method.parse_config(self.method_config)
        except ValidationError as exc:
            problems = "; ".join(
                f"--{'.'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise ConfigError(f"invalid options for method {self.method!r}: {problems}") from None

    @property
    def adapter_name(self) -> str:
        """The name checkpoints get."""
        return self.name or self.dataset.replace("_", "-")


TRAIN_FIELDS = {f.name for f in fields(TrainArgs)} - {"method_config"}

OPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "data": (
        "dataset",
        "data_dir",
        "fold",
        "num_folds",
        "group_by",
        "val_fraction",
        "test_fraction",
        "audio",
        "h5_sample_rate",
    ),
    "model": (
        "method",
        "backbone",
        "pool",
        "frames",
        "window_hop",
        "mean",
        "std",
        "compute_stats",
    ),
    "training": (
        "epochs",
        "lr",
        "batch_size",
        "optimizer",
        "weight_decay",
        "warmup_epochs",
        "grad_clip",
        "early_stop",
        "mixup",
        "specaug",
        "freq_mask",
        "time_mask",
    ),
    "output": ("out", "name", "version", "task", "resume", "tensorboard"),
    "runtime": (
        "seed",
        "device",
        "precision",
        "workers",
        "eval_batch_size",
        "cache_dir",
        "feature_cache",
        "token_cache",
        "progress",
    ),
}
"""The ``--help`` sections of the TrainArgs options (every field but method_config and recipe,
which have their own flags, is in exactly one)."""
COMMAND_FIELDS: dict[str, frozenset[str]] = {
    "train": frozenset(TRAIN_FIELDS - {"recipe"}),
    "crossval": frozenset(TRAIN_FIELDS - {"recipe", "fold", "version", "resume"}),
    "evaluate": frozenset(
        {*OPTION_GROUPS["data"], "backbone", "out", "seed", "device", "precision", "workers"}
        | {"eval_batch_size", "cache_dir", "feature_cache", "progress"}
    ),
}
"""The TrainArgs options each command reads (``evaluate`` takes the method, features and head
from the checkpoint; ``crossval`` sets the fold, version and resume point of each run itself)."""


def method_fields() -> dict[str, dict[str, Any]]:
    """Option name -> {methods using it, help text, annotation} over every registered config."""
    out: dict[str, dict[str, Any]] = {}
    for name, method in ADAPTERS.items():
        docs = field_docs(method.config_cls)
        for fname, info in method.config_cls.model_fields.items():
            if fname == "variant":  # fixed per method (dense / soft MoA)
                continue
            entry = out.setdefault(
                fname, {"methods": [], "help": docs.get(fname, ""), "annotation": info.annotation}
            )
            entry["methods"].append(name)
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a config class / dataclass and its bases (for --help)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith(("lookaside", "training")):
            continue
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
            ):
                docs[stmt.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def coerce_option(annotation: Any, raw: Any) -> Any:
    """A command-line string -> what the config class validates (lists split on commas)."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    if text.lower() == "none":
        return None
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ConfigError(f"{raw!r} is not valid JSON") from None
    if "tuple" in str(annotation) or "list" in str(annotation):
        return [p.strip() for p in text.split(",") if p.strip()]
    return text


def build_args(layers: Sequence[Mapping[str, Any]]) -> TrainArgs:
    """Merge setting layers (lowest precedence first) into validated :class:`TrainArgs`.

    Keys are TrainArgs fields or method-config fields; a method field the chosen method does not
    have is refused with the method's valid options.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k.replace("-", "_"): v for k, v in layer.items() if v is not None})
    options = method_fields()
    method = merged.get("method", TrainArgs.method)
    get_method(method)
    unknown = sorted(set(merged) - TRAIN_FIELDS - set(options) - {"method_config"})
    if unknown:
        raise ConfigError(f"unknown settings {unknown}; see `lookaside-train train --help`")
    config = dict(merged.pop("method_config", {}) or {})
    for key in [k for k in merged if k in options and k not in TRAIN_FIELDS]:
        value = merged.pop(key)
        if method not in options[key]["methods"]:
            valid = [
                f"--{k.replace('_', '-')}" for k, o in options.items() if method in o["methods"]
            ]
            raise ConfigError(
                f"--{key.replace('_', '-')} does not apply to method {method!r}; its options: "
                f"{', '.join(valid) or 'none'}"
            )
        config[key] = coerce_option(options[key]["annotation"], value)
    for key in ("data_dir", "out", "cache_dir", "resume", "audio"):
        if isinstance(merged.get(key), str):
            merged[key] = Path(merged[key]).expanduser()
    return TrainArgs(**merged, method_config=config)


def load_yaml(path: Path) -> dict[str, Any]:
    """A ``--config`` file: a mapping of TrainArgs / method fields."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"--config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a mapping of settings, e.g. 'epochs: 10'")
    return data
