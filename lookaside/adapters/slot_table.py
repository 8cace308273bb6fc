"""Slot bookkeeping of one stack: free, reserved, published, retired slots and route holds.

A slot is *free* (zeroed, in a heap: the lowest first), *reserved* (a load is under way),
*live* (a published adapter), or *retired* (its adapter was removed while a route still holds
it: zeroed and freed when the last holding route is released). The bank guards all of it with its
one lock; nothing here locks, and nothing here runs in the forward.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import torch

from lookaside.adapters.base import AdapterConfig
from lookaside.adapters.stack import AdapterStack
from lookaside.errors import BankFull, ConfigError

__all__ = ["Hold", "StackSlots", "normal_tensors", "release_hold"]


@dataclass(eq=False)
class StackSlots:
    """Bookkeeping of one stack incarnation (guarded by the bank's lock)."""

    key: str
    method: str
    stack: AdapterStack
    capacity: int
    free: list[int]
    """Zeroed slots ready for a reservation (a heap: the lowest slot first)."""
    refs: list[int]
    """Live routes holding each slot."""
    reserved: set[int] = field(default_factory=set)
    retired: set[int] = field(default_factory=set)
    """Slots of removed adapters still held by a route: zeroed and freed on the last release."""
    live: int = 0
    """Published adapters in this stack."""

    @classmethod
    def fresh(cls, key: str, method: str, stack: AdapterStack, capacity: int) -> StackSlots:
        """Every slot of a new (zeroed) stack free."""
        return cls(key, method, stack, capacity, list(range(capacity)), [0] * capacity)

    def in_use(self) -> bool:
        return bool(self.live or self.reserved or self.retired or any(self.refs))

    def reserve(self, cfg: AdapterConfig) -> int:
        """Take the lowest free slot for a load.

        Raises:
            BankFull: no slot is free.
        """
        if not self.free:
            raise BankFull(self.full_message(cfg))
        slot = heapq.heappop(self.free)
        self.reserved.add(slot)
        return slot

    def publish(self, slot: int) -> None:
        """A reserved slot now holds a routable adapter."""
        self.reserved.discard(slot)
        self.live += 1

    def abort(self, slot: int) -> None:
        """A reserved slot goes back (zeroed)."""
        self.reserved.discard(slot)
        self.free_slot(slot)

    def unpublish(self, slot: int) -> None:
        """Its adapter was removed: free the slot now, or retire it while routes hold it."""
        self.live -= 1
        if self.refs[slot]:
            self.retired.add(slot)
        else:
            self.free_slot(slot)

    def hold(self, slot: int) -> None:
        """One more route reads ``slot``."""
        self.refs[slot] += 1

    def unhold(self, slot: int) -> None:
        """A route reading ``slot`` was released; a retired slot is freed by the last one."""
        self.refs[slot] -= 1
        if not self.refs[slot] and slot in self.retired:
            self.retired.discard(slot)
            self.free_slot(slot)

    def free_slot(self, slot: int) -> None:
        """Zero ``slot`` (nothing of the old adapter stays on the device) and make it free."""
        self.stack.clear_slot(slot)
        heapq.heappush(self.free, slot)

    def grow(self, capacity: int) -> None:
        """Re-allocate the stack with ``capacity`` slots (the new ones free).

        Raises:
            ConfigError: a route holds a slot, or a load is pending (call it between batches).
        """
        if any(self.refs):
            raise ConfigError(
                f"routes still hold slots of the {self.method} stack: release them and call "
                "grow() between batches"
            )
        if self.reserved:
            raise ConfigError(
                f"a load into the {self.method} stack is pending: publish or abort it before grow()"
            )
        with normal_tensors():
            self.stack.resize(capacity)
        for slot in range(self.capacity, capacity):
            heapq.heappush(self.free, slot)
        self.refs.extend([0] * (capacity - self.capacity))
        self.capacity = capacity

    def full_message(self, cfg: AdapterConfig) -> str:
        waiting = (
            f", {len(self.retired)} of them retired until their routes are released"
            if self.retired
            else ""
        )
        return (
            f"the {self.method} stack for config {cfg.model_dump_json()} is full "
            f"({self.capacity} slots in use{waiting}); raise its capacity with "
            f"AdapterBank(capacity=...) or bank.grow({self.method!r}, config, capacity) between "
            "batches, or remove an adapter"
        )


@dataclass(eq=False)
class Hold:
    """The slots one route holds."""

    slots: list[tuple[StackSlots, int]]
    released: bool = False


def release_hold(hold: Hold) -> list[StackSlots]:
    """Give a route's slots back (idempotent); the stacks it touched, each once (the caller
    frees those no longer in use)."""
    if hold.released:
        return []
    hold.released = True
    for slots, slot in hold.slots:
        slots.unhold(slot)
    return list({id(s): s for s, _ in hold.slots}.values())


def normal_tensors() -> torch.inference_mode:
    """Allocate adapter memory as normal tensors even when the caller runs under
    ``torch.inference_mode`` (a serving loop often does): inference tensors could never be
    written again outside it (training, randomising, a later load from another thread)."""
    return torch.inference_mode(False)
