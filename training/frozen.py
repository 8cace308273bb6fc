"""The frozen-backbone check: every backbone tensor comes out of training bit-identical.

A SHA-256 per tensor is recorded before training and compared after, instead of a full copy of
the backbone's weights (which would double its memory on the device for the whole run).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from lookaside.errors import LookasideError


def tensor_digests(module: nn.Module) -> dict[str, str]:
    """SHA-256 of each tensor's bytes in ``module.state_dict()``, by key."""
    digests = {}
    for key, value in module.state_dict().items():
        raw = value.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
        digests[key] = hashlib.sha256(raw.tobytes()).hexdigest()
    return digests


def check_frozen(module: nn.Module, before: dict[str, str]) -> None:
    """Raise if any tensor's digest differs from ``before`` (a bug: training must not write it)."""
    for key, digest in tensor_digests(module).items():
        if digest != before.get(key):
            raise LookasideError(f"backbone tensor {key} changed during training")
