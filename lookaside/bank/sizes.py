"""How much memory a bank's adapters take, and how many slots its stacks have.

A base class of :class:`~lookaside.bank.AdapterBank` (kept apart like
:mod:`~lookaside.bank.views`), so that a memory budget can be kept in bytes: what is allocated
(every stack at its capacity, whatever its slots hold, and every head still in memory), what the
published adapters use of it, and what one more slot of a stack costs, by arithmetic.

Heads are counted by a running total in elements (a head never changes its element count; the
bank's dtype gives the bytes, and ``bank.to(dtype)`` moves every head): the bank adds a head when
it builds one, and a ``weakref.finalize`` queues its elements when the head is freed (a removed
adapter's head lives on while a route captured it), lock-free, so any thread may free one; the
queue is settled under the bank's lock. So :meth:`BankSizes.allocated_bytes` costs one pass over
the stacks, not over thousands of heads. Threads: any (every method takes the bank's lock).
"""

from __future__ import annotations

import sys
import weakref
from collections import deque
from collections.abc import Mapping

import torch
from torch import nn

from lookaside.adapters import get_method
from lookaside.adapters.base import AdapterConfig
from lookaside.adapters.shapes import site_shapes, stack_key, total_numel
from lookaside.adapters.stack import AdapterStack
from lookaside.backbone_config import BackboneConfig
from lookaside.bank.slots import SlotTable

__all__ = ["BankSizes", "HeadLedger", "module_numel"]


class HeadLedger:
    """Elements of the heads a bank built that are still in memory, and of its published ones
    (guarded by the bank's lock, but for the queue of freed heads, which any thread appends to)."""

    def __init__(self) -> None:
        self.alive = 0
        """Elements of every head built and not freed yet (reserved, published or removed)."""
        self.published = 0
        """Elements of the heads of published adapters."""
        self._freed: deque[int] = deque()

    def built(self, head: nn.Module) -> None:
        """Count a new head until it is freed (lock held)."""
        elements = module_numel(head)
        self.alive += elements
        # the callback holds the queue, never the bank (which would keep it alive)
        weakref.finalize(head, self._freed.append, elements).atexit = False

    def settle(self) -> None:
        """Take the heads freed since the last call off the running total (lock held)."""
        while self._freed:
            self.alive -= self._freed.popleft()


class BankSizes:
    """What a bank answers about its memory and capacity."""

    backbone_cfg: BackboneConfig
    dtype: torch.dtype
    stacks: nn.ModuleDict
    _table: SlotTable
    _head_ledger: HeadLedger
    _dropped: weakref.WeakSet[AdapterStack]

    # -- bytes -----------------------------------------------------------------------------
    def allocated_bytes(self) -> int:
        """Bytes the adapters hold: every stack's tensors at its capacity (free, reserved, live
        and retired slots alike), stacks freed by the bank that a route still keeps alive, and
        every head in memory (reserved, published, or removed but captured by a route)."""
        with self._table.locked():
            self._head_ledger.settle()
            stacks = [s.stack for s in self._table.by_key.values()]
            stacks += list(self._dropped)  # never in the table again: new stacks are new
            heads = self._head_ledger.alive
        return sum(_stack_bytes(s, self.dtype) for s in stacks) + heads * self.dtype.itemsize

    def used_bytes(self) -> int:
        """Bytes of the published adapters: their slots' share of the stacks and their heads
        (the sum of :meth:`~lookaside.bank.views.AdapterViews.adapter_bytes` over them)."""
        with self._table.locked():
            slots = sum(
                s.live * (_stack_bytes(s.stack, self.dtype) // s.capacity)
                for s in self._table.by_key.values()
            )
            return slots + self._head_ledger.published * self.dtype.itemsize

    def slot_bytes(self, method: str, config: AdapterConfig | Mapping[str, object]) -> int:
        """Bytes one slot of the stack for (method, config) takes, by arithmetic (0 for a
        head-only method): what growing that stack by one slot allocates."""
        spec = get_method(method)
        if spec.head_only:
            return 0
        cfg = spec.parse_config(config)
        return total_numel(site_shapes(self.backbone_cfg, spec.name, cfg)) * self.dtype.itemsize

    # -- capacity --------------------------------------------------------------------------
    def stack_items(self) -> list[tuple[str, AdapterStack]]:
        """A snapshot of ``(stack key, stack)`` pairs, taken under the bank's lock (a released
        route may drop an empty stack from another thread)."""
        with self._table.locked():
            return [(k, s) for k, s in self.stacks.items() if isinstance(s, AdapterStack)]

    def stack_capacity(self, method: str, config: AdapterConfig | Mapping[str, object]) -> int:
        """Slots of the stack for (method, config), whatever their state (free, reserved, live,
        or retired until their routes are released); what it will have if it does not exist yet.
        ``sys.maxsize`` for a head-only method (it uses no slot)."""
        key = _stack_key(method, config)
        if key is None:
            return sys.maxsize
        with self._table.locked():
            return self._table.capacity_for(key)

    def free_slots(self, method: str, config: AdapterConfig | Mapping[str, object]) -> int:
        """Free slots of the stack for (method, config): its capacity if it does not exist yet;
        ``sys.maxsize`` for a head-only method (it uses no slot)."""
        key = _stack_key(method, config)
        if key is None:
            return sys.maxsize
        with self._table.locked():
            return self._table.free_count(key)

    def _drop_stack(self, key: str) -> None:
        """The table freed stack ``key`` (lock held): counted while something keeps it alive."""
        stack = self.stacks[key]
        assert isinstance(stack, AdapterStack)
        self._dropped.add(stack)
        del self.stacks[key]


def module_numel(module: nn.Module) -> int:
    """Elements of a module's parameters and buffers."""
    return sum(t.numel() for t in (*module.parameters(), *module.buffers()))


def _module_bytes(module: nn.Module) -> int:
    return sum(t.nbytes for t in (*module.parameters(), *module.buffers()))


_STACK_BYTES: weakref.WeakKeyDictionary[AdapterStack, tuple[int, torch.dtype, int]] = (
    weakref.WeakKeyDictionary()
)
"""Bytes of a stack per its slot count: its tensors change only when it grows (walking its
modules' parameters costs more than a whole load, and the engine asks after every command)."""


def _stack_bytes(stack: AdapterStack, dtype: torch.dtype) -> int:
    """Bytes of ``stack`` (its slots in the bank's ``dtype``), recomputed when either changed."""
    cached = _STACK_BYTES.get(stack)
    if cached is not None and cached[:2] == (stack.num_slots, dtype):
        return cached[2]
    nbytes = _module_bytes(stack)
    _STACK_BYTES[stack] = (stack.num_slots, dtype, nbytes)
    return nbytes


def _stack_key(method: str, config: AdapterConfig | Mapping[str, object]) -> str | None:
    return stack_key(method, get_method(method).parse_config(config))
