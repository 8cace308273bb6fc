"""AdapterBank: the adapters loaded beside one backbone, and the routes that select them.

The bank never touches the backbone: it owns one :class:`AdapterStack` per (method, config) with
pre-allocated slots, and one head per adapter. Adding an adapter writes one free slot (the stack
grows by doubling when full, so the cost of an add does not grow with the number loaded);
removing one zeroes its slot and frees its head. :meth:`route` turns per-row adapter ids into the
:class:`RowRoute` the backbone forward needs. Thread-safety is the caller's: the service swaps
adapters between batches, never under one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lookaside.adapters import get_method
from lookaside.adapters.base import AdapterConfig, AdapterMethod
from lookaside.adapters.head import AdapterHead, HeadConfig
from lookaside.adapters.route import RouteGroup, RowRoute, SlotIndex
from lookaside.adapters.stack import AdapterStack
from lookaside.backbone import BackboneConfig
from lookaside.errors import AdapterNotFound, ConfigError, InvalidCheckpoint
from lookaside.sites import TokenLayout

HEAD_PREFIX = "head."


@dataclass
class BankEntry:
    """Where one loaded adapter lives."""

    method: str
    config: AdapterConfig
    stack_key: str | None
    """Key of its stack (None for a head-only adapter: the linear probe)."""
    slot: int
    head_key: str


class AdapterBank(nn.Module):
    """Adapters on one device, addressed by id (e.g. ``"esc50@3"``)."""

    def __init__(
        self,
        backbone_cfg: BackboneConfig,
        *,
        slots_per_stack: int = 4,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        self.backbone_cfg = backbone_cfg
        self.slots_per_stack = slots_per_stack
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.trainable = trainable
        self.stacks = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.entries: dict[str, BankEntry] = {}
        self._free: dict[str, list[int]] = {}
        self._head_counter = 0

    # -- membership ------------------------------------------------------------------------
    def __contains__(self, adapter_id: object) -> bool:
        return adapter_id in self.entries

    def ids(self) -> list[str]:
        """Loaded adapter ids."""
        return list(self.entries)

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
        """Load an adapter (``tensors`` from a checkpoint) or create a fresh one (``None``).

        Tensors are checked against the expected names and shapes before any slot is written,
        so a bad adapter never leaves a half-written slot.
        """
        if adapter_id in self.entries:
            raise ConfigError(f"adapter {adapter_id!r} is already loaded; remove it first")
        spec = get_method(method)
        cfg = spec.parse_config(config)
        stack_key = self._stack_key(method, cfg)
        head_module = AdapterHead(head, self.backbone_cfg.embed_dim)
        new_stack = stack_key is not None and stack_key not in self.stacks
        stack = self._stack(stack_key, spec, cfg) if stack_key is not None else None
        if tensors is not None:
            try:
                self._check_tensors(stack, head_module, tensors)
            except InvalidCheckpoint:
                if new_stack and stack_key is not None:  # a rejected adapter leaves nothing behind
                    del self.stacks[stack_key]
                    del self._free[stack_key]
                raise
        slot = self._take_slot(stack_key) if stack is not None and stack_key is not None else -1
        head_module.to(device=self.device, dtype=self.dtype).requires_grad_(self.trainable)
        if tensors is None:
            if stack is not None:
                stack.init_slot(slot, seed)
        else:
            on_device = self._to_device(tensors)
            if stack is not None:
                stack.load_slot(slot, on_device)
            head_module.load_state_dict(
                {
                    k.removeprefix(HEAD_PREFIX): v
                    for k, v in on_device.items()
                    if k.startswith(HEAD_PREFIX)
                }
            )
        head_key = f"h{self._head_counter}"
        self._head_counter += 1
        self.heads[head_key] = head_module
        entry = BankEntry(method, cfg, stack_key, slot, head_key)
        self.entries[adapter_id] = entry
        return entry

    def _to_device(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """One packed host->device copy per adapter, not one per tensor (dozens per adapter).

        The tensors are flattened into one buffer (pinned on CUDA so the copy is asynchronous),
        moved once, and split into views on the device; slots then copy device-to-device.
        """
        names = sorted(tensors)
        if all(tensors[n].device == self.device for n in names):
            return dict(tensors)
        flat = [tensors[n].detach().reshape(-1).to("cpu", self.dtype) for n in names]
        packed = torch.cat(flat)
        if self.device.type == "cuda":
            packed = packed.pin_memory()
        moved = packed.to(self.device, non_blocking=True)
        views = torch.split(moved, [t.numel() for t in flat])
        return {n: v.view(tensors[n].shape) for n, v in zip(names, views, strict=True)}

    def trainable_parameters(self, adapter_id: str) -> list[nn.Parameter]:
        """Parameters an optimizer should update for one adapter: its stack and its head.

        With one adapter per bank (training) this is the whole stack; the backbone never appears.
        """
        stack = self.stack_of(adapter_id)
        params = list(stack.parameters()) if stack is not None else []
        params += list(self.head(adapter_id).parameters())
        return [p for p in params if p.requires_grad]

    def remove(self, adapter_id: str) -> None:
        """Unload an adapter: zero its slot, drop its head (device memory is released)."""
        entry = self._entry(adapter_id)
        if entry.stack_key is not None:
            stack = self.stacks[entry.stack_key]
            assert isinstance(stack, AdapterStack)
            stack.clear_slot(entry.slot)
            self._free[entry.stack_key].append(entry.slot)
            if not any(
                e.stack_key == entry.stack_key for k, e in self.entries.items() if k != adapter_id
            ):
                del self.stacks[entry.stack_key]  # last user gone: free the whole stack
                del self._free[entry.stack_key]
        del self.heads[entry.head_key]
        del self.entries[adapter_id]

    def head(self, adapter_id: str) -> AdapterHead:
        """The head of a loaded adapter."""
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

    def expected_shapes(
        self, method: str, config: AdapterConfig | Mapping[str, object], head: HeadConfig
    ) -> dict[str, tuple[int, ...]]:
        """Tensor names and shapes a checkpoint of this method/config/head must contain."""
        spec = get_method(method)
        cfg = spec.parse_config(config)
        shapes: dict[str, tuple[int, ...]] = {}
        if self._stack_key(method, cfg) is not None:
            shapes.update(AdapterStack(spec, cfg, self.backbone_cfg, 1).slot_shapes())
        head_module = AdapterHead(head, self.backbone_cfg.embed_dim)
        shapes.update(
            {HEAD_PREFIX + k: tuple(v.shape) for k, v in head_module.state_dict().items()}
        )
        return shapes

    def num_adapter_params(self, adapter_id: str) -> int:
        """Trainable parameters of one adapter, head included."""
        stack = self.stack_of(adapter_id)
        sites = stack.params_per_slot() if stack is not None else 0
        return sites + sum(p.numel() for p in self.head(adapter_id).parameters())

    # -- routing ---------------------------------------------------------------------------
    def num_prompts_of(self, adapter_id: str | None) -> int:
        """Prompt tokens a row with this adapter needs (rows are grouped by it)."""
        return 0 if adapter_id is None else self._entry(adapter_id).config.num_prompts()

    def partition(self, adapter_ids: Sequence[str | None]) -> list[list[int]]:
        """Row groups that can share one backbone pass (same number of prompt tokens)."""
        by_len: dict[int, list[int]] = {}
        for row, adapter_id in enumerate(adapter_ids):
            by_len.setdefault(self.num_prompts_of(adapter_id), []).append(row)
        return list(by_len.values())

    def route(self, adapter_ids: Sequence[str | None]) -> RowRoute:
        """Resolve per-row adapter ids (None = bare backbone) into a :class:`RowRoute`."""
        rows_of: dict[str, tuple[list[int], list[int]]] = {}
        prompts = {self.num_prompts_of(a) for a in adapter_ids}
        if len(prompts) > 1:
            raise ConfigError(
                "rows need different prompt lengths: split the batch with partition()"
            )
        for row, adapter_id in enumerate(adapter_ids):
            if adapter_id is None:
                continue
            entry = self._entry(adapter_id)
            if entry.stack_key is None:
                continue
            rows, slots = rows_of.setdefault(entry.stack_key, ([], []))
            rows.append(row)
            slots.append(entry.slot)
        route = RowRoute(batch_size=len(adapter_ids), num_prompts=prompts.pop() if prompts else 0)
        for key, (rows, slots) in rows_of.items():
            stack = self.stacks[key]
            assert isinstance(stack, AdapterStack)
            whole = len(rows) == len(adapter_ids)
            row_index = None if whole else torch.tensor(rows, dtype=torch.long, device=self.device)
            route.groups.append(RouteGroup(stack, row_index, SlotIndex.of(slots, self.device)))
        return route

    def classify(
        self, tokens: Tensor, layout: TokenLayout, adapter_ids: Sequence[str | None]
    ) -> list[Tensor | None]:
        """Per-row logits from each row's own head (None for rows without an adapter)."""
        out: list[Tensor | None] = [None] * len(adapter_ids)
        rows_of: dict[str, list[int]] = {}
        for row, adapter_id in enumerate(adapter_ids):
            if adapter_id is not None:
                rows_of.setdefault(adapter_id, []).append(row)
        for adapter_id, rows in rows_of.items():
            index = torch.tensor(rows, dtype=torch.long, device=tokens.device)
            logits = self.head(adapter_id)(tokens.index_select(0, index), layout)
            for i, row in enumerate(rows):
                out[row] = logits[i]
        return out

    # -- internals -------------------------------------------------------------------------
    def _entry(self, adapter_id: str) -> BankEntry:
        try:
            return self.entries[adapter_id]
        except KeyError:
            loaded = ", ".join(sorted(self.entries)) or "none"
            raise AdapterNotFound(
                f"adapter {adapter_id!r} is not loaded; loaded: {loaded}"
            ) from None

    @staticmethod
    def _stack_key(method: str, cfg: AdapterConfig) -> str | None:
        if get_method(method).head_only:
            return None
        # One stack per (method, config); ModuleDict keys may not contain '.', so hash the JSON.
        digest = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:12]
        return f"{method}_{digest}"

    def _stack(self, key: str, spec: AdapterMethod, cfg: AdapterConfig) -> AdapterStack:
        if key not in self.stacks:
            new = AdapterStack(spec, cfg, self.backbone_cfg, self.slots_per_stack)
            new.to(device=self.device, dtype=self.dtype).requires_grad_(self.trainable)
            self.stacks[key] = new
            self._free[key] = list(range(self.slots_per_stack))
        stack = self.stacks[key]
        assert isinstance(stack, AdapterStack)
        return stack

    def _take_slot(self, key: str) -> int:
        free = self._free[key]
        if not free:
            stack = self.stacks[key]
            assert isinstance(stack, AdapterStack)
            old = stack.num_slots
            stack.resize(old * 2)
            free.extend(range(old, old * 2))
        free.sort()
        return free.pop(0)

    def _check_tensors(
        self, stack: AdapterStack | None, head: AdapterHead, tensors: Mapping[str, Tensor]
    ) -> None:
        expected = dict(stack.slot_shapes()) if stack is not None else {}
        expected.update({HEAD_PREFIX + k: tuple(v.shape) for k, v in head.state_dict().items()})
        found = {
            n: (tuple(t.shape), str(t.dtype).removeprefix("torch."), t.is_floating_point())
            for n, t in tensors.items()
        }
        problems = tensor_problems(expected, found)
        problems += [
            f"{n} contains NaN or Inf"
            for n in sorted(set(expected) & set(tensors))
            if tensors[n].is_floating_point() and not torch.isfinite(tensors[n]).all()
        ]
        if problems:
            raise InvalidCheckpoint("adapter tensors do not fit: " + "; ".join(problems))


def tensor_problems(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[tuple[int, ...], str, bool]],
) -> list[str]:
    """Every difference between the tensors an adapter needs and those offered, as messages.

    Shared by the bank (tensors in memory) and the checkpoint loader (a safetensors header, before
    any data is read), so both refuse the same things with the same words.

    Args:
        expected: name -> shape.
        found: name -> (shape, dtype name, is floating point).
    """
    problems: list[str] = []
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing}")
    if extra:
        problems.append(f"unexpected tensors {extra}")
    for name in sorted(set(expected) & set(found)):
        shape, dtype, floating = found[name]
        if tuple(shape) != tuple(expected[name]):
            problems.append(f"{name} has shape {list(shape)}, expected {list(expected[name])}")
        if not floating:
            problems.append(f"{name} has dtype {dtype}, expected a floating-point type")
    return problems
