"""The device tier in bytes: how far the engine's bank may grow, and a snapshot of its size.

The bank's adapters take :meth:`~lookaside.bank.AdapterBank.allocated_bytes` of device memory:
every stack at its capacity (free, reserved, live and retired slots alike) plus every head in
memory. With a budget (``Engine(device_budget_bytes=...)``), the engine keeps that at or under
the budget after every reservation:

- a **new stack** (first adapter of a method and config) is created with ``stack_slots`` slots
  (the engine's ``bank_capacity``), or with as many as fit, at least one;
- a **full stack** grows to ``min(grown_capacity(capacity), the most slots that fit)``, not to a
  power of two it cannot hold;
- a reservation into a **free slot** still adds the adapter's head;

where "fits" means ``allocated - old stack + new stack + the new head <= budget``. Past that
:class:`~lookaside.errors.BankFull` names the budget; the registry evicts an idle adapter of that
stack and retries (or answers 503). Transient peak: a growth copies the old stack into the new
one, so during the copy both are allocated (up to ``old stack bytes`` over the budget); the old
one is freed when the copy ends (on CUDA the caching allocator keeps the block for reuse).

A stack never shrinks (:meth:`~lookaside.bank.AdapterBank.grow`), and the bank remembers the
capacity of a stack it freed: a stack created again for that config gets it back, so when that
capacity no longer fits the reservation is refused (:class:`BankFull`) rather than allocated.

Threads: :meth:`DeviceTier.make_room` and :meth:`DeviceTier.refresh` run on the engine worker
(the bank's owner), between batches; :meth:`DeviceTier.stats` is read by any thread without a
lock: the worker swaps in a new frozen :class:`DeviceTierStats` after every command that changes
the bank, and readers get the latest object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from lookaside.adapters import get_method
from lookaside.adapters.base import AdapterConfig
from lookaside.adapters.head import HeadConfig
from lookaside.adapters.shapes import stack_key
from lookaside.bank import AdapterBank
from lookaside.errors import BankFull
from service.residency import grown_capacity

__all__ = ["DeviceTier", "DeviceTierStats"]

log = logging.getLogger("service.engine")
T = TypeVar("T")


@dataclass(frozen=True)
class DeviceTierStats:
    """The bank's device memory after the worker's last command."""

    budget: int | None
    """Most bytes the adapters may take (None: no byte limit)."""
    allocated: int
    """Bytes allocated for adapters (stacks at capacity, retired slots and heads included)."""
    used: int
    """Bytes of the published adapters (their slots and heads)."""
    adapters: int
    """Published adapters."""


class DeviceTier:
    """The budget of one engine's bank and the latest snapshot of its size (module docstring)."""

    def __init__(self, budget: int | None, *, stack_slots: int) -> None:
        self.budget = budget
        self.stack_slots = stack_slots
        """Slots of a new stack when they fit (the engine's ``bank_capacity``)."""
        self._stats = DeviceTierStats(budget, 0, 0, 0)

    @property
    def bank_capacity(self) -> int:
        """The capacity to build the bank with: with a budget, 1, so that
        :meth:`make_room` sets each new stack's capacity (the bank can raise a stack's
        capacity, never lower it)."""
        return self.stack_slots if self.budget is None else 1

    def stats(self) -> DeviceTierStats:
        """The latest snapshot (any thread, no lock: one reference read)."""
        return self._stats

    def refresh(self, bank: AdapterBank) -> None:
        """Take a new snapshot of ``bank`` (worker thread, after a command)."""
        allocated, used = bank.allocated_bytes(), bank.used_bytes()
        self._stats = DeviceTierStats(self.budget, allocated, used, len(bank.ids()))

    def apply(self, bank: AdapterBank, command: Callable[[], T]) -> T:
        """Run one bank command, then take a new snapshot (worker thread), also when it failed
        (a failed load may have grown a stack): before its caller sees the future complete."""
        try:
            return command()
        finally:
            self.refresh(bank)

    def make_room(
        self,
        bank: AdapterBank,
        method: str,
        config: AdapterConfig | Mapping[str, object],
        head: HeadConfig,
    ) -> None:
        """Before ``bank.reserve`` (worker, between batches: no route holds a slot): grow the
        full stack of (method, config) to :func:`~service.residency.grown_capacity` of its
        slots, capped at what fits; with a budget, also set the capacity of a stack not created
        yet to what fits, and refuse an adapter whose head (and new slots) do not fit.

        Raises:
            BankFull: the adapter does not fit in the budget (the message names it).
        """
        cfg = get_method(method).parse_config(config)
        slot, key = bank.slot_bytes(method, cfg), stack_key(method, cfg)
        exists = key is not None and any(k == key for k, _ in bank.stack_items())
        full = exists and bank.free_slots(method, cfg) == 0
        capacity = bank.stack_capacity(method, cfg)  # a new stack's: 1, or a freed stack's
        if self.budget is None:
            if full:
                self._grow(bank, method, cfg, grown_capacity(capacity))
            return
        head_bytes = bank.expected_bytes(method, cfg, head) - slot
        allocated = bank.allocated_bytes()
        room = self.budget - allocated - head_bytes  # bytes left for new slots
        if key is None or slot == 0 or (exists and not full):
            if room < 0:  # a free slot (or no slot at all): only the head is new
                raise BankFull(self._full(allocated, method, head_bytes, "its head"))
            return
        # new slots within the budget, each with the head its adapter will bring (a slot whose
        # head would not fit is padding: the registry, which counts slot + head, would never
        # fill it)
        fits = max(self.budget - allocated, 0) // (slot + head_bytes)
        if full:  # the old stack stays counted: it is freed once the new one holds its slots
            if fits < 1:
                what = f"one more slot of its {capacity}-slot stack and its head"
                raise BankFull(self._full(allocated, method, slot + head_bytes, what))
            self._grow(bank, method, cfg, min(grown_capacity(capacity), capacity + fits))
        elif fits < capacity:  # the bank can raise a capacity set before, never lower it
            need = capacity * slot + head_bytes
            raise BankFull(self._full(allocated, method, need, f"a new stack of {capacity} slots"))
        elif min(self.stack_slots, fits) > capacity:
            bank.grow(method, cfg, min(self.stack_slots, fits))  # the stack's size at creation

    def _grow(self, bank: AdapterBank, method: str, cfg: AdapterConfig, capacity: int) -> None:
        bank.grow(method, cfg, capacity)  # re-allocates and copies the stack
        log.info(
            "grew the %s stack to %d slots (device tier: %d bytes allocated, budget %s)",
            method,
            capacity,
            bank.allocated_bytes(),
            "none" if self.budget is None else f"{self.budget} bytes",
        )

    def _full(self, allocated: int, method: str, needed: int, what: str) -> str:
        return (
            f"device tier full: {allocated} of {self.budget} bytes allocated; a {method} adapter "
            f"needs {needed} bytes ({what}); evict an adapter of that stack or raise "
            "device_cache_bytes"
        )
