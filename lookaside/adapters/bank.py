"""AdapterBank: the adapters loaded beside one backbone, and the routes that select them.

The bank never touches the backbone: it owns one :class:`AdapterStack` per (method, config) with a
fixed number of slots (its *capacity*), and one head per adapter. The slot lifecycle
(docs/design.md §4):

- ``reserve`` takes a free slot (or raises :class:`BankFull`: capacity never grows by itself);
  a reserved adapter is invisible to :meth:`AdapterBank.route`;
- ``load`` validates the tensors, then copies them into the reserved slot (one packed host->device
  copy; on CUDA on a side stream, from pinned memory, recording an event); any thread;
- ``publish`` makes the current stream wait for that copy and makes the adapter routable;
- a route *holds* the slots it reads; ``remove`` makes an id unroutable at once and retires its
  slot, which is zeroed and reused only when the last route holding it is released (a stack whose
  adapters are all gone is freed the same way).

One lock guards the bookkeeping; the forward never takes it (routes carry their stacks and heads).
``add`` is the one-shot reserve -> load -> publish.
"""

from __future__ import annotations

import heapq
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from lookaside.adapters import get_method
from lookaside.adapters.base import AdapterConfig, AdapterMethod
from lookaside.adapters.head import AdapterHead, HeadConfig
from lookaside.adapters.route import RouteGroup, RowRoute
from lookaside.adapters.shapes import HEAD_PREFIX, head_shapes, stack_key, total_numel
from lookaside.adapters.shapes import expected_shapes as shapes_of_adapter
from lookaside.adapters.slot_index import SlotIndex, index_tensor
from lookaside.adapters.stack import AdapterStack
from lookaside.backbone_config import BackboneConfig
from lookaside.checkpoint import nonfinite_names, tensor_problems
from lookaside.errors import AdapterNotFound, BankFull, ConfigError, InvalidCheckpoint
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
    "Reservation",
]


@dataclass
class BankEntry:
    """Where one published adapter lives."""

    method: str
    config: AdapterConfig
    stack_key: str | None
    """Key of its stack (None for a head-only adapter: the linear probe)."""
    slot: int
    head_key: str


ReservationState = Literal["reserved", "loading", "loaded", "published", "aborted"]


@dataclass(eq=False)
class Reservation:
    """A slot (and a head) taken for one adapter that is not routable yet.

    Pass it to :meth:`AdapterBank.load`, then :meth:`AdapterBank.publish` (or
    :meth:`AdapterBank.abort` to give the slot back).
    """

    adapter_id: str
    method: str
    config: AdapterConfig
    head_config: HeadConfig
    stack_key: str | None
    slot: int
    """Slot in the stack (-1 for a head-only adapter)."""
    state: ReservationState = "reserved"
    head: AdapterHead | None = field(default=None, repr=False)
    _bank: int = field(default=0, repr=False)
    _event: Any = field(default=None, repr=False)
    """``torch.cuda.Event`` recorded after an asynchronous copy (None on the CPU)."""
    _staging: Tensor | None = field(default=None, repr=False)
    """Pinned host buffer of an asynchronous copy, kept alive until the copy is waited on."""


@dataclass(eq=False)
class _Slots:
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

    def in_use(self) -> bool:
        return bool(self.live or self.reserved or self.retired or any(self.refs))


@dataclass(eq=False)
class _Hold:
    """The slots one route holds."""

    slots: list[tuple[_Slots, int]]
    released: bool = False


class AdapterBank(nn.Module):
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
        self._slots: dict[str, _Slots] = {}
        self._reservations: dict[str, Reservation] = {}
        self._capacity_of: dict[str, int] = {}
        self._lock = threading.Lock()
        self._collected: deque[_Hold] = deque()
        self._copy_stream: Any = None
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
            if self._reservations or any(any(s.refs) for s in self._slots.values()):
                raise ConfigError(
                    "cannot move the adapter bank while routes or loads use it: release them and "
                    "move it between batches"
                )
            probe = fn(torch.empty(0, device=self.device, dtype=self.dtype))
            moved = super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
            self.device, self.dtype = probe.device, probe.dtype
            self._copy_stream = None
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
        tensors: Mapping[str, Tensor] | None = None,
        *,
        seed: int = 0,
    ) -> BankEntry:
        """Reserve, load and publish in one call: ``tensors`` from a checkpoint, or a fresh adapter
        (``None``: the method's initialisation drawn from ``seed``). Nothing stays behind when
        it fails."""
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
        with _normal_tensors():
            head_module = AdapterHead(head, self._dim, device=self.device, dtype=self.dtype)
        head_module.requires_grad_(self.trainable)
        with self._locked():
            if adapter_id in self.entries or adapter_id in self._reservations:
                raise ConfigError(f"adapter {adapter_id!r} is already loaded; remove it first")
            slot = -1
            if key is not None:
                slots = self._slots.get(key) or self._create_stack(key, spec, cfg)
                if not slots.free:
                    raise BankFull(self._full_message(slots, cfg))
                slot = heapq.heappop(slots.free)
                slots.reserved.add(slot)
            reservation = Reservation(
                adapter_id, method, cfg, head, key, slot, head=head_module, _bank=id(self)
            )
            self._reservations[adapter_id] = reservation
            return reservation

    def load(
        self,
        reservation: Reservation,
        tensors: Mapping[str, Tensor] | None,
        *,
        seed: int = 0,
        validated: bool = False,
    ) -> None:
        """Write one adapter into its reserved slot (any thread; the slot is not routable yet).

        ``tensors`` (checkpoint names, ``head.*`` included) are checked for names, shapes, dtype
        and finite values before anything is written; ``None`` initialises a fresh adapter from
        ``seed`` (sites first, then the head, from one CPU generator).

        ``validated=True`` skips only the finite-value scan (names and shapes are still checked):
        pass it for the tensors of an :class:`~lookaside.checkpoint.AdapterCheckpoint` that
        ``load_checkpoint`` / ``validate_checkpoint_bytes`` produced, which already scanned every
        value; the default keeps the scan for tensors of unknown origin.

        Raises:
            InvalidCheckpoint: the tensors do not fit; the reservation stays (abort it).
        """
        with self._locked():
            self._check_reservation(reservation, "reserved", "load")
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
                self._check_tensors(stack, reservation.head_config, tensors, finite=not validated)
                self._copy_in(reservation, stack, head, tensors)
        except BaseException:
            reservation.state = "reserved"
            raise
        reservation.state = "loaded"

    def publish(self, reservation: Reservation) -> BankEntry:
        """Make a loaded adapter routable (the current stream first waits for its copy)."""
        with self._locked():
            self._check_reservation(reservation, "loaded", "publish")
            self._wait_for_copy(reservation)
            head = reservation.head
            assert head is not None
            head_key = f"h{self._head_counter}"
            self._head_counter += 1
            self.heads[head_key] = head
            entry = BankEntry(
                reservation.method,
                reservation.config,
                reservation.stack_key,
                reservation.slot,
                head_key,
            )
            if reservation.stack_key is not None:
                slots = self._slots[reservation.stack_key]
                slots.reserved.discard(reservation.slot)
                slots.live += 1
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
            self._check_reservation(reservation, ("reserved", "loaded"), "abort")
            self._wait_for_copy(reservation)
            if reservation.stack_key is not None:
                slots = self._slots[reservation.stack_key]
                slots.reserved.discard(reservation.slot)
                self._free_slot(slots, reservation.slot)
                self._drop_if_unused(slots)
            del self._reservations[reservation.adapter_id]
            reservation.state = "aborted"
            reservation.head = None

    def remove(self, adapter_id: str) -> None:
        """Unload an adapter: unroutable at once; its head is dropped and its slot retired (zeroed
        and reused once every route holding it is released; at once when none does)."""
        with self._locked():
            entry = self._entry(adapter_id)
            del self.entries[adapter_id]
            del self.heads[entry.head_key]
            if entry.stack_key is not None:
                slots = self._slots[entry.stack_key]
                slots.live -= 1
                if slots.refs[entry.slot]:
                    slots.retired.add(entry.slot)
                else:
                    self._free_slot(slots, entry.slot)
                self._drop_if_unused(slots)

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
        spec = get_method(method)
        cfg = spec.parse_config(config)
        key = stack_key(method, cfg)
        if key is None:
            raise ConfigError(f"method {method!r} trains only a head: it has no stack to grow")
        with self._locked():
            slots = self._slots.get(key)
            current = slots.capacity if slots is not None else self._capacity_for(key)
            if capacity < current:
                raise ConfigError(
                    f"capacity can only grow: the {method} stack has {current} slots, "
                    f"asked for {capacity}"
                )
            if slots is None:
                self._capacity_of[key] = capacity
                return
            if capacity == current:
                return
            if any(slots.refs):
                raise ConfigError(
                    f"routes still hold slots of the {method} stack: release them and call "
                    "grow() between batches"
                )
            if slots.reserved:
                raise ConfigError(
                    f"a load into the {method} stack is pending: publish or abort it before grow()"
                )
            with _normal_tensors():
                slots.stack.resize(capacity)
            for slot in range(slots.capacity, capacity):
                heapq.heappush(slots.free, slot)
            slots.refs.extend([0] * (capacity - slots.capacity))
            slots.capacity = capacity
            self._capacity_of[key] = capacity

    def free_slots(self, method: str, config: AdapterConfig | Mapping[str, object]) -> int:
        """Free slots of the stack for (method, config): its capacity if it does not exist yet;
        ``sys.maxsize`` for a head-only method (it uses no slot)."""
        cfg = get_method(method).parse_config(config)
        key = stack_key(method, cfg)
        if key is None:
            return sys.maxsize
        with self._locked():
            slots = self._slots.get(key)
            return len(slots.free) if slots is not None else self._capacity_for(key)

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
        shapes = self.expected_shapes(method, config, head)
        return total_numel(shapes) * self.dtype.itemsize

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
        out.update(
            {
                HEAD_PREFIX + k: v.detach().clone()
                for k, v in self.head(adapter_id).state_dict().items()
            }
        )
        return out

    def num_adapter_params(self, adapter_id: str) -> int:
        """Trainable parameters of one adapter, head included."""
        stack = self.stack_of(adapter_id)
        sites = stack.params_per_slot() if stack is not None else 0
        return sites + sum(p.numel() for p in self.head(adapter_id).parameters())

    # -- routing ---------------------------------------------------------------------------
    def partition(self, adapter_ids: Sequence[str | None]) -> list[list[int]]:
        """Row groups that can share one backbone pass: same number of prompt tokens, inserted
        before the same block (rows without prompts form one group)."""
        with self._locked():
            by_key: dict[tuple[int, int], list[int]] = {}
            for row, adapter_id in enumerate(adapter_ids):
                by_key.setdefault(self._prompt_key(adapter_id), []).append(row)
            return list(by_key.values())

    def route(self, adapter_ids: Sequence[str | None]) -> RowRoute:
        """Resolve per-row adapter ids (None = bare backbone) into a :class:`RowRoute` that holds
        the slots it uses until :meth:`RowRoute.release` (or the end of ``with bank.route(...)``).

        Raises:
            AdapterNotFound: an id is not published (unknown, removed, or still loading).
            ConfigError: rows need different prompt layouts (split them with :meth:`partition`).
        """
        rows_of: dict[str, tuple[list[int], list[int]]] = {}
        heads: dict[str, AdapterHead] = {}
        with self._locked():
            prompt_keys = {self._prompt_key(a) for a in adapter_ids}
            if len(prompt_keys) > 1:
                raise ConfigError(
                    "rows need different prompt tokens (count or first block): split the batch "
                    "with partition()"
                )
            num_prompts, prompt_start = prompt_keys.pop() if prompt_keys else (0, 0)
            for row, adapter_id in enumerate(adapter_ids):
                if adapter_id is None:
                    continue
                entry = self._entry(adapter_id)
                head = self.heads[entry.head_key]
                assert isinstance(head, AdapterHead)
                heads[adapter_id] = head
                if entry.stack_key is None:
                    continue
                rows, slots = rows_of.setdefault(entry.stack_key, ([], []))
                rows.append(row)
                slots.append(entry.slot)
            held = [(self._slots[k], s) for k, (_, slots) in rows_of.items() for s in set(slots)]
            for owner, slot in held:
                owner.refs[slot] += 1
            hold = _Hold(held)
            stacks = {k: self._slots[k].stack for k in rows_of}
        route = RowRoute(
            batch_size=len(adapter_ids),
            num_prompts=num_prompts,
            prompt_start=prompt_start,
            heads=heads,
        )
        if held:
            route.hold(lambda: self._release(hold), lambda: self._collected.append(hold))
        try:
            for key, (rows, slots) in rows_of.items():
                whole = len(rows) == len(adapter_ids)
                row_index = None if whole else index_tensor(rows, self.device)
                route.groups.append(
                    RouteGroup(stacks[key], row_index, SlotIndex.of(slots, self.device))
                )
        except BaseException:
            route.release()
            raise
        return route

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
        out: list[Tensor | None] = [None] * len(adapter_ids)
        rows_of: dict[str, list[int]] = {}
        for row, adapter_id in enumerate(adapter_ids):
            if adapter_id is not None:
                rows_of.setdefault(adapter_id, []).append(row)
        for adapter_id, rows in rows_of.items():
            head = route.heads[adapter_id] if route is not None else self.head(adapter_id)
            if len(rows) == tokens.shape[0]:
                logits = head(tokens, layout)
            else:
                logits = head(tokens.index_select(0, index_tensor(rows, tokens.device)), layout)
            for i, row in enumerate(rows):
                out[row] = logits[i]
        return out

    # -- internals -------------------------------------------------------------------------
    @property
    def _dim(self) -> int:
        return self.backbone_cfg.embed_dim

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the bookkeeping lock; first settle routes that were garbage collected without
        being released (their finalizer only queues them: it may run anywhere, lock held)."""
        with self._lock:
            while self._collected:
                self._drop_hold(self._collected.popleft())
            yield

    def _release(self, hold: _Hold) -> None:
        with self._locked():
            self._drop_hold(hold)

    def _drop_hold(self, hold: _Hold) -> None:
        if hold.released:
            return
        hold.released = True
        for slots, slot in hold.slots:
            slots.refs[slot] -= 1
            if not slots.refs[slot] and slot in slots.retired:
                slots.retired.discard(slot)
                self._free_slot(slots, slot)
        for slots in {id(s): s for s, _ in hold.slots}.values():
            self._drop_if_unused(slots)

    def _free_slot(self, slots: _Slots, slot: int) -> None:
        slots.stack.clear_slot(slot)
        heapq.heappush(slots.free, slot)

    def _drop_if_unused(self, slots: _Slots) -> None:
        """Free a whole stack once no adapter, reservation or route uses it."""
        if not slots.in_use() and self._slots.get(slots.key) is slots:
            del self._slots[slots.key]
            del self.stacks[slots.key]

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

    def _prompt_key(self, adapter_id: str | None) -> tuple[int, int]:
        """(prompt tokens, first block that writes them); (0, 0) without prompts."""
        if adapter_id is None:
            return (0, 0)
        cfg = self._entry(adapter_id).config
        n = cfg.num_prompts()
        return (n, cfg.first_layer(self.backbone_cfg.depth)) if n else (0, 0)

    def _check_reservation(
        self, reservation: Reservation, states: str | tuple[str, ...], action: str
    ) -> None:
        if reservation._bank != id(self):
            raise ConfigError(f"reservation for {reservation.adapter_id!r} is not of this bank")
        allowed = (states,) if isinstance(states, str) else states
        if reservation.state not in allowed:
            raise ConfigError(
                f"cannot {action} adapter {reservation.adapter_id!r}: it is {reservation.state} "
                f"(order: reserve -> load -> publish, or abort before publishing)"
            )
        assert self._reservations.get(reservation.adapter_id) is reservation

    def _capacity_for(self, key: str) -> int:
        return self._capacity_of.get(key, self.capacity)

    def _full_message(self, slots: _Slots, cfg: AdapterConfig) -> str:
        waiting = (
            f", {len(slots.retired)} of them retired until their routes are released"
            if slots.retired
            else ""
        )
        return (
            f"the {slots.method} stack for config {cfg.model_dump_json()} is full "
            f"({slots.capacity} slots in use{waiting}); raise its capacity with "
            f"AdapterBank(capacity=...) or bank.grow({slots.method!r}, config, capacity) between "
            "batches, or remove an adapter"
        )

    def _create_stack(self, key: str, spec: AdapterMethod, cfg: AdapterConfig) -> _Slots:
        """Allocate a zeroed stack of the configured capacity (lock held: one per config)."""
        capacity = self._capacity_for(key)
        with torch.device("meta"):  # validates the config and builds shapes without memory
            stack = AdapterStack(spec, cfg, self.backbone_cfg, capacity)
        with _normal_tensors():
            stack.to(dtype=self.dtype).to_empty(device=self.device)
            with torch.no_grad():
                for p in stack.parameters():
                    p.zero_()
        stack.requires_grad_(self.trainable)
        self.stacks[key] = stack
        slots = _Slots(key, spec.name, stack, capacity, list(range(capacity)), [0] * capacity)
        self._slots[key] = slots
        return slots

    def _check_tensors(
        self,
        stack: AdapterStack | None,
        head: HeadConfig,
        tensors: Mapping[str, Tensor],
        *,
        finite: bool = True,
    ) -> None:
        expected = dict(stack.slot_shapes()) if stack is not None else {}
        expected.update(head_shapes(head, self._dim))
        found = {
            n: (tuple(t.shape), str(t.dtype).removeprefix("torch."), t.is_floating_point())
            for n, t in tensors.items()
        }
        problems = tensor_problems(expected, found)
        if finite:  # every value of the expected tensors (a sum per tensor first)
            known = {n: tensors[n] for n in expected if n in tensors}
            problems += [f"{n} contains NaN or Inf" for n in nonfinite_names(known)]
        if problems:
            raise InvalidCheckpoint("adapter tensors do not fit: " + "; ".join(problems))

    def _copy_in(
        self,
        reservation: Reservation,
        stack: AdapterStack | None,
        head: AdapterHead,
        tensors: Mapping[str, Tensor],
    ) -> None:
        """One packed host->device copy per adapter, not one per tensor (dozens per adapter).

        The tensors are flattened into one buffer, moved once and split into views on the
        device; slots then copy device-to-device. On CUDA the buffer is pinned and everything
        runs on a side stream (after the current stream, which zeroed the slot), with an event
        that :meth:`publish` makes the current stream wait on.
        """
        if self.device.type != "cuda":
            self._write(reservation.slot, stack, head, self._packed(tensors, self.device))
            return
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        stream = self._copy_stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        if all(_is_on(t, self.device) for t in tensors.values()):
            # Already on the device: copy slot-wise on the side stream; the caller may free
            # its tensors as soon as we return, so the allocator must wait for this stream.
            for t in tensors.values():
                t.record_stream(stream)
            with torch.cuda.stream(stream):
                self._write(reservation.slot, stack, head, dict(tensors))
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record(stream)
            reservation._event = event
            return
        host = self._packed_host(tensors, pin=True)
        with torch.cuda.stream(stream):
            moved = self._split(host, tensors, host[0].to(self.device, non_blocking=True))
            self._write(reservation.slot, stack, head, moved)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(stream)
        reservation._event = event
        reservation._staging = host[0]

    def _packed(self, tensors: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
        if all(_is_on(t, device) for t in tensors.values()):
            return dict(tensors)
        host = self._packed_host(tensors, pin=False)
        return self._split(host, tensors, host[0].to(device))

    def _packed_host(
        self, tensors: Mapping[str, Tensor], *, pin: bool
    ) -> tuple[Tensor, list[str], list[int]]:
        names = sorted(tensors)
        sizes = [tensors[n].numel() for n in names]
        packed = torch.empty(sum(sizes), dtype=self.dtype, pin_memory=pin)
        offset = 0
        for n, size in zip(names, sizes, strict=True):
            packed[offset : offset + size].copy_(tensors[n].detach().reshape(-1))
            offset += size
        return packed, names, sizes

    @staticmethod
    def _split(
        host: tuple[Tensor, list[str], list[int]], tensors: Mapping[str, Tensor], moved: Tensor
    ) -> dict[str, Tensor]:
        _, names, sizes = host
        views = torch.split(moved, sizes)
        return {n: v.view(tensors[n].shape) for n, v in zip(names, views, strict=True)}

    def _write(
        self, slot: int, stack: AdapterStack | None, head: AdapterHead, on_device: dict[str, Tensor]
    ) -> None:
        if stack is not None:
            stack.load_slot(slot, on_device)
        head.load_state_dict(
            {
                k.removeprefix(HEAD_PREFIX): v
                for k, v in on_device.items()
                if k.startswith(HEAD_PREFIX)
            }
        )

    def _wait_for_copy(self, reservation: Reservation) -> None:
        if reservation._event is not None:
            torch.cuda.current_stream(self.device).wait_event(reservation._event)
            reservation._event = None
            reservation._staging = None


def _is_on(tensor: Tensor, device: torch.device) -> bool:
    """``tensor`` lives on ``device`` (an index-less ``cuda`` means any CUDA device here: the
    copy then goes through the current one)."""
    return tensor.device.type == device.type and (
        device.index is None or tensor.device.index == device.index
    )


def _normal_tensors() -> torch.inference_mode:
    """Allocate adapter memory as normal tensors even when the caller runs under
    ``torch.inference_mode`` (a serving loop often does): inference tensors could never be
    written again outside it (training, randomising, a later load from another thread)."""
    return torch.inference_mode(False)
