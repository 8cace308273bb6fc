"""Slot bookkeeping of one stack: free, reserved, published, retired slots and route holds.

A slot is *free* (zeroed, in a heap: the lowest first), *reserved* (a load is under way),
*live* (a published adapter), or *retired* (its adapter was removed while a route still holds
it: zeroed and freed when the last holding route is released). The bank guards all of it with its
one lock (:attr:`SlotTable.lock`), which nothing in the forward takes. Threads: any (every
method but :meth:`SlotTable.locked` and :meth:`SlotTable.release` expects the lock held; a
route's garbage-collection finalizer only queues its hold, lock-free, on whatever thread).
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from lookaside.adapters.base import AdapterConfig
from lookaside.adapters.stack import AdapterStack
from lookaside.errors import BankFull, ConfigError

__all__ = ["Hold", "SlotTable", "StackSlots", "normal_tensors", "release_hold"]


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


class SlotTable:
    """Every stack's slots, the capacities set for stacks not created yet, and the holds of
    routes collected without being released; ``on_drop(key)`` frees a stack no longer used."""

    def __init__(self, capacity: int, on_drop: Callable[[str], None]) -> None:
        self.capacity = capacity
        """Slots of a new stack unless :meth:`set_capacity` said otherwise for its key."""
        self.by_key: dict[str, StackSlots] = {}
        self.lock = threading.Lock()
        self.collected: deque[Hold] = deque()
        """Holds of routes garbage collected unreleased (settled under the lock)."""
        self._capacity_of: dict[str, int] = {}
        self._on_drop = on_drop

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lock; first settle routes that were garbage collected without being
        released (their finalizer only queues them: it may run anywhere, lock held)."""
        with self.lock:
            while self.collected:
                self._drop_hold(self.collected.popleft())
            yield

    def capacity_for(self, key: str) -> int:
        """Slots the stack ``key`` has, or will have when created."""
        slots = self.by_key.get(key)
        return slots.capacity if slots is not None else self._capacity_of.get(key, self.capacity)

    def free_count(self, key: str) -> int:
        """Free slots of stack ``key`` (its capacity while it does not exist)."""
        slots = self.by_key.get(key)
        return len(slots.free) if slots is not None else self.capacity_for(key)

    def set_capacity(self, key: str, method: str, capacity: int) -> None:
        """Grow stack ``key`` (of ``method``) to ``capacity`` (now if it exists, else when it is
        created).

        Raises:
            ConfigError: ``capacity`` is below the current one, or the stack is in use.
        """
        current = self.capacity_for(key)
        if capacity < current:
            raise ConfigError(
                f"capacity can only grow: the {method} stack has {current} slots, "
                f"asked for {capacity}"
            )
        slots = self.by_key.get(key)
        if slots is not None and capacity > slots.capacity:
            slots.grow(capacity)
        self._capacity_of[key] = capacity

    def busy(self) -> bool:
        """A route holds a slot of some stack."""
        return any(any(s.refs) for s in self.by_key.values())

    def hold(self, slots_of: dict[str, list[int]]) -> Hold:
        """One more route reads these slots (stack key -> its slots, repeats allowed)."""
        held = [(self.by_key[k], s) for k, slots in slots_of.items() for s in set(slots)]
        for owner, slot in held:
            owner.hold(slot)
        return Hold(held)

    def release(self, hold: Hold) -> None:
        """A route was released (any thread; takes the lock)."""
        with self.locked():
            self._drop_hold(hold)

    def drop_if_unused(self, slots: StackSlots) -> None:
        """Free a whole stack once no adapter, reservation or route uses it; a stack made again
        later starts at the table's capacity, not at what this one had grown to (its bytes may
        no longer fit the engine's budget)."""
        if not slots.in_use() and self.by_key.get(slots.key) is slots:
            del self.by_key[slots.key]
            self._capacity_of.pop(slots.key, None)
            self._on_drop(slots.key)

    def _drop_hold(self, hold: Hold) -> None:
        for slots in release_hold(hold):
            self.drop_if_unused(slots)


def normal_tensors() -> torch.inference_mode:
    """Allocate adapter memory as normal tensors even when the caller runs under
    ``torch.inference_mode`` (a serving loop often does): inference tensors could never be
    written again outside it (training, randomising, a later load from another thread)."""
    return torch.inference_mode(False)
