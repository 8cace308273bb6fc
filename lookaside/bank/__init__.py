"""AdapterBank: the adapters loaded beside one backbone, and the routes that select them.

The bank never touches the backbone: it owns one :class:`AdapterStack` per (method, config) with a
fixed number of slots (its *capacity*), and one head per adapter. The slot lifecycle
(docs/design.md §4):

- ``reserve`` takes a free slot (or raises :class:`BankFull`: capacity never grows by itself);
  a reserved adapter is invisible to :meth:`AdapterBank.route`;
- ``load`` validates the tensors, then copies them into the reserved slot (one packed host->device
  copy; on CUDA on a side stream, from pinned memory, recording an event); any thread; a
  :class:`~lookaside.bank.packed.PackedAdapter` (checked and packed once) is copied as it is;
- ``publish`` makes the current stream wait for that copy and makes the adapter routable;
- a route *holds* the slots it reads; ``remove`` makes an id unroutable at once and retires its
  slot, which is zeroed and reused only when the last route holding it is released (a stack whose
  adapters are all gone is freed the same way).

One lock guards the bookkeeping; the forward never takes it (routes carry their stacks and heads).
``add`` is the one-shot reserve -> load -> publish. Threads: every method may be called from any
thread (the lock serialises the bookkeeping); the engine reserves, publishes, aborts and routes
on its worker thread and loads on its loader thread; a route is released, or garbage collected,
on any thread.

The parts live by concern: :mod:`~lookaside.bank.slots` (slot states, holds),
:mod:`~lookaside.bank.packed` (checks, packing), :mod:`~lookaside.bank.transfer` (side-stream
copies), :mod:`~lookaside.bank.sizes` (bytes, capacity),
:mod:`~lookaside.bank.routing` (routes and per-row heads),
:mod:`~lookaside.adapters.shapes` (names, shapes, stack keys), and
:mod:`~lookaside.bank.reservation` (the records).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lookaside.adapters import get_method
from lookaside.adapters.base import AdapterConfig, AdapterMethod
from lookaside.adapters.head import AdapterHead, HeadConfig
from lookaside.adapters.shapes import HEAD_PREFIX, head_shapes, stack_key
from lookaside.adapters.stack import AdapterStack
from lookaside.backbone_config import BackboneConfig
from lookaside.bank.packed import PackedAdapter, check_tensors
from lookaside.bank.reservation import BankEntry, Reservation
from lookaside.bank.route import RowRoute
from lookaside.bank.routing import (
    assemble_route,
    classify_rows,
    common_prompt_key,
    group_rows,
    partition_rows,
    prompt_key,
)
from lookaside.bank.sizes import BankSizes, HeadLedger, module_numel
from lookaside.bank.slots import SlotTable, StackSlots, normal_tensors
from lookaside.bank.transfer import Transfer, wait_for_copy
from lookaside.bank.views import AdapterViews
from lookaside.checkpoint import AdapterCheckpoint, ValidatedCheckpoint
from lookaside.errors import ConfigError
from lookaside.sites import TokenLayout

if TYPE_CHECKING:
    from lookaside.backbone import VisionTransformer

DEFAULT_CAPACITY = 8
"""Slots per stack of a serving bank unless ``capacity=`` says otherwise."""
DEFAULT_TRAINABLE_CAPACITY = 1
"""Slots per stack of a trainable bank: an optimiser keeps state for every slot of a stack."""

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_TRAINABLE_CAPACITY",
    "HEAD_PREFIX",
    "AdapterBank",
    "BankEntry",
    "PackedAdapter",
    "Reservation",
]


class AdapterBank(BankSizes, AdapterViews, nn.Module):
    """Adapters on one device, addressed by id (e.g. ``"esc50@3"``).

    Args:
        backbone_cfg: the backbone the adapters are built for.
        capacity: slots per stack, fixed when a stack is created (:meth:`grow` raises it between
            batches); default 1 for a trainable bank, 8 otherwise.
        device: where adapters live (default CPU; :meth:`for_backbone` takes the backbone's).
        dtype: storage dtype of adapters and heads (bf16 banks need autocast in the forward).
        trainable: adapters require grad (training); such a bank never re-allocates a parameter.
        fingerprint: the backbone's fingerprint; checkpoints for another backbone are refused.
    """

    def __init__(
        self,
        backbone_cfg: BackboneConfig,
        *,
        capacity: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        trainable: bool = False,
        fingerprint: str | None = None,
    ) -> None:
        super().__init__()
        if capacity is None:
            capacity = DEFAULT_TRAINABLE_CAPACITY if trainable else DEFAULT_CAPACITY
        if capacity < 1:
            raise ConfigError(f"capacity must be at least 1 slot per stack, got {capacity}")
        if not dtype.is_floating_point:
            raise ConfigError(f"adapters are stored in a floating-point dtype, got {dtype}")
        self.backbone_cfg = backbone_cfg
        self.capacity = capacity
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.trainable = trainable
        self.fingerprint = fingerprint
        self.stacks = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.entries: dict[str, BankEntry] = {}
        self._reservations: dict[str, Reservation] = {}
        self._table = SlotTable(capacity, on_drop=self._drop_stack)
        self._head_ledger, self._dropped = HeadLedger(), weakref.WeakSet()
        # the table's parts under the names tests' bookkeeping snapshots read
        self._slots, self._lock, self._collected = (
            self._table.by_key,
            self._table.lock,
            self._table.collected,
        )
        self._transfer = Transfer(self.device, self.dtype)
        self._head_counter = 0

    @classmethod
    def for_backbone(cls, backbone: VisionTransformer, **kw: Any) -> AdapterBank:
        """A bank beside ``backbone``: its config, fingerprint, device and (by default) dtype."""
        param = next(backbone.parameters())
        kw.setdefault("device", param.device)
        kw.setdefault("dtype", param.dtype)
        kw.setdefault("fingerprint", backbone.fingerprint())
        return cls(backbone.cfg, **kw)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> AdapterBank:
        """``.to()`` / ``.cuda()`` / ``.half()`` move the adapters; the bank's device and dtype
        (used for the stacks and heads it creates later) follow. Refused while a route or a
        load uses the bank (their tensors would be left behind): move it between batches."""
        with self._locked():
            if self._reservations or self._table.busy():
                raise ConfigError(
                    "cannot move the adapter bank while routes or loads use it: release them and "
                    "move it between batches"
                )
            probe = fn(torch.empty(0, device=self.device, dtype=self.dtype))
            moved = super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
            self.device, self.dtype = probe.device, probe.dtype
            self._transfer.reset(self.device, self.dtype)
            return moved

    # -- membership ------------------------------------------------------------------------
    def __contains__(self, adapter_id: object) -> bool:
        return adapter_id in self.entries

    def ids(self) -> list[str]:
        """Published adapter ids."""
        with self._locked():
            return list(self.entries)

    # -- lifecycle -------------------------------------------------------------------------
    def add(
        self,
        adapter_id: str,
        method: str,
        config: AdapterConfig | Mapping[str, object],
        head: HeadConfig,
        tensors: AdapterCheckpoint | Mapping[str, Tensor] | PackedAdapter | None = None,
        *,
        seed: int = 0,
    ) -> BankEntry:
        """Reserve, load and publish in one call: ``tensors`` from a checkpoint (or packed), or a
        fresh adapter (``None``: the method's initialisation drawn from ``seed``). Nothing stays
        behind when it fails."""
        reservation = self.reserve(adapter_id, method, config, head)
        try:
            self.load(reservation, tensors, seed=seed)
            return self.publish(reservation)
        except BaseException:
            self.abort(reservation)
            raise

    def reserve(
        self,
        adapter_id: str,
        method: str,
        config: AdapterConfig | Mapping[str, object],
        head: HeadConfig,
    ) -> Reservation:
        """Take a free slot (creating the stack on first use) and a head for ``adapter_id``.

        Raises:
            BankFull: the stack has no free slot.
            ConfigError: the id is loaded or being loaded, or the config is invalid.
        """
        spec = get_method(method)
        cfg = spec.parse_config(config)
        key = stack_key(method, cfg)
        with normal_tensors():
            # no init: load() writes every value, or initialises it from its seed
            head_module = AdapterHead(
                head, self._dim, device=self.device, dtype=self.dtype, init=False
            )
        head_module.requires_grad_(self.trainable)
        with self._locked():
            self._head_ledger.built(head_module)  # counted until it is freed, whatever happens next
            if adapter_id in self.entries or adapter_id in self._reservations:
                raise ConfigError(f"adapter {adapter_id!r} is already loaded; remove it first")
            slot = -1
            if key is not None:
                slots = self._slots.get(key) or self._create_stack(key, spec, cfg)
                slot = slots.reserve(cfg)
            reservation = Reservation(
                adapter_id, method, cfg, head, key, slot, head=head_module, _bank=id(self)
            )
            self._reservations[adapter_id] = reservation
            return reservation

    def load(
        self,
        reservation: Reservation,
        checkpoint: AdapterCheckpoint | Mapping[str, Tensor] | PackedAdapter | None,
        *,
        seed: int = 0,
    ) -> None:
        """Write one adapter into its reserved slot (any thread; the slot is not routable yet).

        ``checkpoint`` (an :class:`~lookaside.checkpoint.AdapterCheckpoint` or its tensors,
        ``head.*`` included) is checked for names, shapes, dtype and finite values before anything
        is written; the finite scan is skipped only for a
        :class:`~lookaside.checkpoint.ValidatedCheckpoint` (already scanned). A
        :class:`~lookaside.bank.packed.PackedAdapter` (built from a validated checkpoint) is only
        compared by names and shapes, and its buffer copied as it is (no packing, no scan).
        ``None``: a fresh adapter from ``seed`` (sites, then the head, from one CPU generator).

        Raises:
            InvalidCheckpoint: the tensors do not fit; the reservation stays (abort it).
        """
        trusted = isinstance(checkpoint, ValidatedCheckpoint)
        tensors = checkpoint.tensors if isinstance(checkpoint, AdapterCheckpoint) else checkpoint
        with self._locked():
            reservation.check(id(self), self._reservations, "reserved", "load")
            reservation.state = "loading"
            stack = self._slots[reservation.stack_key].stack if reservation.stack_key else None
        head = reservation.head
        assert head is not None
        try:
            if tensors is None:
                generator = torch.Generator().manual_seed(seed)
                if stack is not None:
                    stack.init_slot(reservation.slot, generator)
                head.reset_parameters(generator)
            else:
                expected = dict(stack.slot_shapes()) if stack is not None else {}
                expected.update(head_shapes(reservation.head_config, self._dim))
                if isinstance(tensors, PackedAdapter):
                    tensors.check_fits(expected)
                    copy = self._transfer.copy_packed(reservation.slot, stack, head, tensors)
                else:
                    check_tensors(expected, tensors, finite=not trusted)
                    copy = self._transfer.copy_in(reservation.slot, stack, head, tensors)
                reservation._event, reservation._staging = copy
        except BaseException:
            reservation.state = "reserved"
            raise
        reservation.state = "loaded"

    def publish(self, reservation: Reservation) -> BankEntry:
        """Make a loaded adapter routable (the current stream first waits for its copy)."""
        with self._locked():
            reservation.check(id(self), self._reservations, "loaded", "publish")
            self._wait_for_copy(reservation)
            head = reservation.head
            assert head is not None
            head_key = f"h{self._head_counter}"
            self._head_counter += 1
            self.heads[head_key] = head
            self._head_ledger.published += module_numel(head)
            entry = BankEntry(
                reservation.method,
                reservation.config,
                reservation.stack_key,
                reservation.slot,
                head_key,
            )
            if reservation.stack_key is not None:
                self._slots[reservation.stack_key].publish(reservation.slot)
            del self._reservations[reservation.adapter_id]
            self.entries[reservation.adapter_id] = entry
            reservation.state = "published"
            reservation.head = None
            return entry

    def abort(self, reservation: Reservation) -> None:
        """Give a reservation's slot back (zeroed); idempotent."""
        with self._locked():
            if reservation.state == "aborted":
                return
            reservation.check(id(self), self._reservations, ("reserved", "loaded"), "abort")
            self._wait_for_copy(reservation)
            if reservation.stack_key is not None:
                slots = self._slots[reservation.stack_key]
                slots.abort(reservation.slot)
                self._table.drop_if_unused(slots)
            del self._reservations[reservation.adapter_id]
            reservation.state = "aborted"
            reservation.head = None

    def remove(self, adapter_id: str) -> None:
        """Unload an adapter: unroutable at once; its head is dropped and its slot retired (zeroed
        and reused once every route holding it is released; at once when none does)."""
        with self._locked():
            entry = self._entry(adapter_id)
            del self.entries[adapter_id]
            self._head_ledger.published -= module_numel(self.heads[entry.head_key])
            del self.heads[entry.head_key]
            if entry.stack_key is not None:
                slots = self._slots[entry.stack_key]
                slots.unpublish(entry.slot)
                self._table.drop_if_unused(slots)

    def grow(
        self, method: str, config: AdapterConfig | Mapping[str, object], capacity: int
    ) -> None:
        """Raise the capacity of one stack (or set it for a stack not created yet).

        Growing re-allocates every parameter of the stack, so it is refused while a route holds a
        slot of it or a load into it is pending: call it between batches. A trainable bank never
        grows (an optimiser would keep updating the old parameters): build it with ``capacity=``.
        """
        if self.trainable:
            raise ConfigError(
                "a trainable bank never grows (an optimiser holds its parameters); "
                "create it with AdapterBank(capacity=...)"
            )
        cfg = get_method(method).parse_config(config)
        key = stack_key(method, cfg)
        if key is None:
            raise ConfigError(f"method {method!r} trains only a head: it has no stack to grow")
        with self._locked():
            self._table.set_capacity(key, method, capacity)

    # -- routing ---------------------------------------------------------------------------
    def partition(self, adapter_ids: Sequence[str | None]) -> list[list[int]]:
        """Row groups that can share one backbone pass: same number of prompt tokens, inserted
        before the same block (rows without prompts form one group)."""
        with self._locked():
            return partition_rows([self._prompt_key(a) for a in adapter_ids])

    def route(self, adapter_ids: Sequence[str | None]) -> RowRoute:
        """Resolve per-row adapter ids (None = bare backbone) into a :class:`RowRoute` that holds
        the slots it uses until :meth:`RowRoute.release` (or the end of ``with bank.route(...)``).

        Raises:
            AdapterNotFound: an id is not published (unknown, removed, or still loading).
            ConfigError: rows need different prompt layouts (split them with :meth:`partition`).
        """
        with self._locked():
            num_prompts, prompt_start = common_prompt_key(map(self._prompt_key, adapter_ids))
            groups = group_rows(adapter_ids, self._resolve)
            rows_of = groups.rows_of
            hold = self._table.hold({k: slots for k, (_, slots) in rows_of.items()})
            stacks = {k: self._slots[k].stack for k in rows_of}
        route = RowRoute(
            batch_size=len(adapter_ids),
            num_prompts=num_prompts,
            prompt_start=prompt_start,
            heads=groups.heads,
        )
        if hold.slots:
            route.hold(lambda: self._table.release(hold), lambda: self._collected.append(hold))
        return assemble_route(route, groups, stacks, self.device)

    def classify(
        self,
        tokens: Tensor,
        layout: TokenLayout,
        adapter_ids: Sequence[str | None],
        *,
        route: RowRoute | None = None,
    ) -> list[Tensor | None]:
        """Per-row logits from each row's own head (None for rows without an adapter).

        With ``route``, the heads are those the route captured (so a forward finishes with the
        adapters it started with even if one is removed meanwhile).
        """
        head_of = route.heads.__getitem__ if route is not None else self.head
        return classify_rows(tokens, layout, adapter_ids, head_of)

    # -- internals -------------------------------------------------------------------------
    def _locked(self) -> AbstractContextManager[None]:
        return self._table.locked()

    def _resolve(self, adapter_id: str) -> tuple[str | None, int, AdapterHead]:
        """(stack key, slot, head) of a published adapter (lock held)."""
        entry = self._entry(adapter_id)
        head = self.heads[entry.head_key]
        assert isinstance(head, AdapterHead)
        return entry.stack_key, entry.slot, head

    def _prompt_key(self, adapter_id: str | None) -> tuple[int, int]:
        """(prompt tokens, first block that writes them); (0, 0) without prompts."""
        config = None if adapter_id is None else self._entry(adapter_id).config
        return prompt_key(config, self.backbone_cfg.depth)

    def _create_stack(self, key: str, spec: AdapterMethod, cfg: AdapterConfig) -> StackSlots:
        """Allocate a zeroed stack of the configured capacity (lock held: one per config)."""
        capacity = self._table.capacity_for(key)
        with normal_tensors():
            stack = AdapterStack.allocate(
                spec, cfg, self.backbone_cfg, capacity, self.device, self.dtype
            )
        stack.requires_grad_(self.trainable)
        self.stacks[key] = stack
        slots = StackSlots.fresh(key, spec.name, stack, capacity)
        self._slots[key] = slots
        return slots

    def _wait_for_copy(self, reservation: Reservation) -> None:
        wait_for_copy(self.device, reservation._event)
        reservation._event = None
        reservation._staging = None
