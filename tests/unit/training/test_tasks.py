"""Training per task kind: every dataset names a kind training knows, the method-vs-dataset check
speaks for both sides, and the frozen check sees a changed backbone tensor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lookaside.errors import ConfigError, LookasideError
from lookaside.tasks import TASKS
from training.datasets import DATASETS, datasets_of
from training.frozen import check_frozen, tensor_digests
from training.tasks import TRAINING_KINDS, check_method, kind_of_dataset


def test_every_dataset_trains_a_known_task_kind() -> None:
    for name, entry in DATASETS.items():
        assert entry.task in TASKS, name
        assert kind_of_dataset(name) is TRAINING_KINDS[entry.task]
    assert set(TRAINING_KINDS) == set(TASKS)
    assert datasets_of("av_events") == ["ave"]


def test_method_and_dataset_must_share_a_task_kind() -> None:
    check_method("lora", "esc50")
    check_method("avpea", "ave")
    with pytest.raises(ConfigError, match=r"'avpea' is audio-visual .*--dataset ave"):
        check_method("avpea", "esc50")
    with pytest.raises(ConfigError, match="dataset 'ave' is audio-visual; choose .*avpea"):
        check_method("lora", "ave")


def test_frozen_check_compares_per_tensor_digests() -> None:
    module = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)).to(torch.bfloat16)
    before = tensor_digests(module)
    assert set(before) == set(module.state_dict())
    check_frozen(module, before)  # unchanged: passes
    with torch.no_grad():
        module[1].bias[0] += 1
    with pytest.raises(LookasideError, match=r"1\.bias changed"):
        check_frozen(module, before)
