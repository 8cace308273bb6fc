"""Training per task kind, in one explicit table keyed like :data:`lookaside.tasks.TASKS`.

A dataset names its task kind (:data:`training.datasets.DATASETS`); :func:`kind_of_dataset` gives
the :class:`TrainingKind` that loads, trains and scores it. Adding a kind: one module with a
:class:`TrainingKind` subclass and one line in :data:`TRAINING_KINDS`.
"""

from __future__ import annotations

from lookaside.adapters import ADAPTERS
from lookaside.errors import ConfigError
from lookaside.tasks import task_for
from training.datasets import dataset_entry, datasets_of
from training.tasks.av_events import AvEventsTraining, AvForward
from training.tasks.base import RunSetup, TrainData, TrainingKind, cache_root
from training.tasks.clip import ClipTraining

__all__ = [
    "TRAINING_KINDS",
    "AvForward",
    "RunSetup",
    "TrainData",
    "TrainingKind",
    "cache_root",
    "check_method",
    "kind_of_dataset",
]

TRAINING_KINDS: dict[str, TrainingKind] = {
    k.task.name: k for k in (ClipTraining(), AvEventsTraining())
}
DEFAULT_KIND = "clip"
"""The kind most datasets and methods are; a mismatch message names the other side's needs."""


def kind_of_dataset(dataset: str) -> TrainingKind:
    """The training kind of ``--dataset`` (its declared task kind)."""
    return TRAINING_KINDS[dataset_entry(dataset).task]


def check_method(method: str, dataset: str) -> None:
    """The method must serve the dataset's task kind (one message per side of the mismatch)."""
    data_kind = kind_of_dataset(dataset)
    if data_kind.task.serves(method):
        return
    serving = ", ".join(n for n in ADAPTERS if data_kind.task.serves(n))
    if data_kind.task.name != DEFAULT_KIND:
        raise ConfigError(
            f"dataset {dataset!r} is {data_kind.modality}; choose {data_kind.a_method}: {serving}"
        )
    method_kind = TRAINING_KINDS[task_for(method).name]
    raise ConfigError(
        f"method {method!r} is {method_kind.modality} ({method_kind.inputs}); dataset "
        f"{dataset!r} is {data_kind.modality}. Use --dataset "
        f"{' or '.join(datasets_of(method_kind.task.name))}, or {data_kind.a_method}: {serving}"
    )
