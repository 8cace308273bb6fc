"""Which stacked slot each row of a group uses: the one type every site's forward receives.

Kept apart from :mod:`lookaside.bank.route` (which builds routes from stacks) so a site module
imports only this, never the route, the stack or the bank (no import cycle through them).
Threads: built by whoever builds the route; read by the forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SlotIndex", "index_tensor"]


def index_tensor(values: list[int], device: torch.device) -> Tensor:
    """An int64 index on ``device``; on CUDA built in pinned memory and copied non-blocking, so
    the host can prepare the next batch while the device still runs this one."""
    if device.type == "cuda":
        host = torch.tensor(values, dtype=torch.long, pin_memory=True)
        return host.to(device, non_blocking=True)
    return torch.tensor(values, dtype=torch.long, device=device)


@dataclass(frozen=True)
class SlotIndex:
    """Which stacked slot each row of a group uses.

    Attributes:
        slots: ``[n]`` int64 slot per row, on the compute device.
        uniform: the slot when every row uses the same one (lets kernels skip the gather).
    """

    slots: Tensor
    uniform: int | None

    @staticmethod
    def of(slots: list[int], device: torch.device) -> SlotIndex:
        """Build from a Python list (one host->device copy per batch and group)."""
        uniform = slots[0] if slots and all(s == slots[0] for s in slots) else None
        return SlotIndex(index_tensor(slots, device), uniform)

    def take(self, stacked: Tensor) -> Tensor:
        """``stacked[slot]`` (uniform: one slot, no batch dim) or ``stacked[slots]`` (per row)."""
        return stacked[self.uniform] if self.uniform is not None else stacked[self.slots]
