"""Read-only views of one published adapter: its head, stack, tensors and sizes.

A base class of :class:`~lookaside.bank.AdapterBank` (kept apart so the bank module
holds the lifecycle and routing only). Threads: any; like the bank's own readers these read the
entries without the lock (a dict lookup; an id removed meanwhile raises AdapterNotFound).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lookaside.adapters.base import AdapterConfig
from lookaside.adapters.head import AdapterHead, HeadConfig
from lookaside.adapters.shapes import HEAD_PREFIX, total_numel
from lookaside.adapters.shapes import expected_shapes as shapes_of_adapter
from lookaside.adapters.stack import AdapterStack
from lookaside.backbone_config import BackboneConfig
from lookaside.bank.reservation import BankEntry, Reservation
from lookaside.errors import AdapterNotFound

__all__ = ["AdapterViews"]


class AdapterViews:
    """What a bank answers about one adapter (and about one not loaded yet: its shapes)."""

    backbone_cfg: BackboneConfig
    dtype: torch.dtype
    stacks: nn.ModuleDict
    heads: nn.ModuleDict
    entries: dict[str, BankEntry]
    _reservations: dict[str, Reservation]

    @property
    def _dim(self) -> int:
        return self.backbone_cfg.embed_dim

    # -- sizes -----------------------------------------------------------------------------
    def adapter_bytes(self, adapter_id: str) -> int:
        """Device bytes of one published adapter: its slot in every site, plus its head."""
        stack = self.stack_of(adapter_id)
        sites = stack.params_per_slot() if stack is not None else 0
        head = total_numel(self.head(adapter_id).cfg.shapes(self._dim))
        return (sites + head) * self.dtype.itemsize

    def expected_bytes(
        self, method: str, config: AdapterConfig | Mapping[str, object], head: HeadConfig
    ) -> int:
        """Device bytes an adapter will take once loaded, by arithmetic (nothing allocated)."""
        return total_numel(self.expected_shapes(method, config, head)) * self.dtype.itemsize

    def expected_shapes(
        self, method: str, config: AdapterConfig | Mapping[str, object], head: HeadConfig
    ) -> dict[str, tuple[int, ...]]:
        """Tensor names and shapes a checkpoint of this method/config/head must contain
        (:func:`lookaside.adapters.shapes.expected_shapes`: nothing is allocated)."""
        return shapes_of_adapter(self.backbone_cfg, method, config, head)

    # -- one adapter -----------------------------------------------------------------------
    def trainable_parameters(self, adapter_id: str) -> list[nn.Parameter]:
        """Parameters an optimizer should update for one adapter: its stack and its head.

        With one adapter per bank (training) this is the whole stack; the backbone never appears.
        A trainable bank never replaces these parameters (it never grows).
        """
        stack = self.stack_of(adapter_id)
        params = list(stack.parameters()) if stack is not None else []
        params += list(self.head(adapter_id).parameters())
        return [p for p in params if p.requires_grad]

    def head(self, adapter_id: str) -> AdapterHead:
        """The head of a published adapter."""
        head = self.heads[self._entry(adapter_id).head_key]
        assert isinstance(head, AdapterHead)
        return head

    def stack_of(self, adapter_id: str) -> AdapterStack | None:
        """The stack holding an adapter's sites (None for head-only adapters)."""
        key = self._entry(adapter_id).stack_key
        if key is None:
            return None
        stack = self.stacks[key]
        assert isinstance(stack, AdapterStack)
        return stack

    def adapter_tensors(self, adapter_id: str) -> dict[str, Tensor]:
        """Every tensor of one adapter (sites + ``head.*``), detached, as checkpoints store them."""
        entry = self._entry(adapter_id)
        stack = self.stack_of(adapter_id)
        out = stack.slot_tensors(entry.slot) if stack is not None else {}
        head = self.head(adapter_id).state_dict()
        out.update({HEAD_PREFIX + k: v.detach().clone() for k, v in head.items()})
        return out

    def num_adapter_params(self, adapter_id: str) -> int:
        """Trainable parameters of one adapter, head included."""
        stack = self.stack_of(adapter_id)
        sites = stack.params_per_slot() if stack is not None else 0
        return sites + sum(p.numel() for p in self.head(adapter_id).parameters())

    def _entry(self, adapter_id: str) -> BankEntry:
        try:
            return self.entries[adapter_id]
        except KeyError:
            loading = " (it is still loading: publish it first)"
            note = loading if adapter_id in self._reservations else ""
            loaded = ", ".join(sorted(self.entries)) or "none"
            raise AdapterNotFound(
                f"adapter {adapter_id!r} is not loaded{note}; loaded: {loaded}"
            ) from None
