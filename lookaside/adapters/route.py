"""Per-batch routing: which stack and slot each row of a batch uses.

A :class:`RowRoute` is built once per batch by the adapter bank and passed explicitly through the
backbone forward (it implements :class:`lookaside.sites.Route`): there is no "active adapter"
state anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lookaside.sites import SitePosition, TokenLayout

if TYPE_CHECKING:
    from lookaside.adapters.stack import AdapterStack


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
        return SlotIndex(torch.tensor(slots, dtype=torch.long, device=device), uniform)

    def take(self, stacked: Tensor) -> Tensor:
        """``stacked[slot]`` (uniform: one slot, no batch dim) or ``stacked[slots]`` (per row)."""
        return stacked[self.uniform] if self.uniform is not None else stacked[self.slots]


@dataclass
class RouteGroup:
    """Rows of a batch that use slots of one stack."""

    stack: AdapterStack
    rows: Tensor | None
    """Batch rows of this group, or None when the group is the whole batch (no gather needed)."""
    index: SlotIndex


@dataclass
class RowRoute:
    """Which adapter each row of one batch uses, resolved to stacks and slots.

    Built once per batch (by :meth:`lookaside.adapters.bank.AdapterBank.route`) and passed
    explicitly through the forward: there is no "active adapter" state anywhere.
    """

    batch_size: int
    groups: list[RouteGroup] = field(default_factory=list)
    num_prompts: int = 0
    prompt_start: int = 0
    """First block that writes prompts (the backbone inserts prompt tokens just before it)."""

    def add_to(
        self, layer: int, position: SitePosition, x: Tensor, out: Tensor, layout: TokenLayout
    ) -> Tensor:
        """``out`` plus every row's own contribution at one site (``out`` itself if none).

        Semantics: ``result[i] = out[i] + site_{stack(i)}(x[i], slot(i))`` for rows whose adapter
        has this site, ``out[i]`` for the others.

        Without autograd the contributions are accumulated into ``out`` in place (one scatter per
        group, no full-batch temporaries); with autograd a fresh tensor is returned, because the
        site may have saved ``out`` itself for the backward pass (``attn.post``: ``x is out``).
        """
        inplace = not torch.is_grad_enabled()
        for g in self.groups:
            site = g.stack.site(layer, position)
            if site is None:
                continue
            # Under autocast a site may return float32 (softmax, reductions) into a bf16 stream.
            if g.rows is None:
                delta = site(x, g.index, layout).to(out.dtype)
                out = out.add_(delta) if inplace else out + delta
            else:
                delta = site(x.index_select(0, g.rows), g.index, layout).to(out.dtype)
                out = (
                    out.index_add_(0, g.rows, delta) if inplace else out.index_add(0, g.rows, delta)
                )
        return out

    def write_prompts(self, layer: int, x: Tensor, layout: TokenLayout) -> Tensor:
        """Replace the prompt tokens with this block's prompts, row by row (deep prompt tuning)."""
        start, stop = layout.num_prefix, layout.num_special
        prompts = x[:, start:stop]
        changed = False
        for g in self.groups:
            site = g.stack.site(layer, "tokens")
            if site is None:
                continue
            new = site(x if g.rows is None else x.index_select(0, g.rows), g.index, layout)
            prompts = new if g.rows is None else prompts.index_copy(0, g.rows, new)
            changed = True
        if not changed:
            return x
        return torch.cat([x[:, :start], prompts, x[:, stop:]], dim=1)
