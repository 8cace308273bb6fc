"""Building a batch's :class:`RowRoute` from per-row adapter ids, and per-row classification.

The bank resolves ids to (stack, slot, head) under its lock (:func:`group_rows`); the index
tensors are built after it, outside the lock (:func:`assemble_route`). Prompt tuning changes the
token layout, so rows share one backbone pass only with the same prompt key (:func:`prompt_key`).
Threads: the caller's (the engine's worker builds routes and classifies; training its one thread).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lookaside.adapters.base import AdapterConfig
from lookaside.adapters.head import AdapterHead
from lookaside.adapters.slot_index import SlotIndex, index_tensor
from lookaside.adapters.stack import AdapterStack
from lookaside.bank.route import RouteGroup, RowRoute
from lookaside.errors import ConfigError
from lookaside.sites import TokenLayout

__all__ = [
    "RowGroups",
    "assemble_route",
    "classify_rows",
    "common_prompt_key",
    "group_rows",
    "partition_rows",
    "prompt_key",
]

PromptKey = tuple[int, int]
"""(prompt tokens, first block that writes them); (0, 0) without prompts."""


def prompt_key(config: AdapterConfig | None, depth: int) -> PromptKey:
    """The prompt layout a row with an adapter of ``config`` needs (None: no adapter)."""
    if config is None:
        return (0, 0)
    n = config.num_prompts()
    return (n, config.first_layer(depth)) if n else (0, 0)


def common_prompt_key(keys: Iterable[PromptKey]) -> PromptKey:
    """The one prompt key every row of a route shares ((0, 0) for no rows).

    Raises:
        ConfigError: rows need different prompt layouts (split them with ``partition``).
    """
    distinct = set(keys)
    if len(distinct) > 1:
        raise ConfigError(
            "rows need different prompt tokens (count or first block): split the batch "
            "with partition()"
        )
    return distinct.pop() if distinct else (0, 0)


def partition_rows(keys: Sequence[PromptKey]) -> list[list[int]]:
    """Rows grouped by prompt key (row ``i`` has ``keys[i]``), in order of first appearance."""
    by_key: dict[PromptKey, list[int]] = {}
    for row, key in enumerate(keys):
        by_key.setdefault(key, []).append(row)
    return list(by_key.values())


@dataclass
class RowGroups:
    """A batch's rows grouped by stack: ``stack key -> (rows, slot of each row)``, and the head
    of every adapter used."""

    rows_of: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    heads: dict[str, AdapterHead] = field(default_factory=dict)


def group_rows(
    adapter_ids: Sequence[str | None],
    resolve: Callable[[str], tuple[str | None, int, AdapterHead]],
) -> RowGroups:
    """Group rows by stack; ``resolve(id) -> (stack key or None, slot, head)`` (bank's lock)."""
    groups = RowGroups()
    for row, adapter_id in enumerate(adapter_ids):
        if adapter_id is None:
            continue
        key, slot, head = resolve(adapter_id)
        groups.heads[adapter_id] = head
        if key is None:
            continue
        rows, slots = groups.rows_of.setdefault(key, ([], []))
        rows.append(row)
        slots.append(slot)
    return groups


def assemble_route(
    route: RowRoute,
    groups: RowGroups,
    stacks: dict[str, AdapterStack],
    device: torch.device,
) -> RowRoute:
    """Add one :class:`RouteGroup` per stack (its rows' index tensors on ``device``) to
    ``route``; a route whose groups cannot be built is released, not leaked."""
    try:
        for key, (rows, slots) in groups.rows_of.items():
            whole = len(rows) == route.batch_size
            row_index = None if whole else index_tensor(rows, device)
            route.groups.append(RouteGroup(stacks[key], row_index, SlotIndex.of(slots, device)))
    except BaseException:
        route.release()
        raise
    return route


def classify_rows(
    tokens: Tensor,
    layout: TokenLayout,
    adapter_ids: Sequence[str | None],
    head_of: Callable[[str], AdapterHead],
) -> list[Tensor | None]:
    """Per-row logits from each row's own head (None for rows without an adapter): one head
    call per adapter over its rows."""
    out: list[Tensor | None] = [None] * len(adapter_ids)
    rows_of: dict[str, list[int]] = {}
    for row, adapter_id in enumerate(adapter_ids):
        if adapter_id is not None:
            rows_of.setdefault(adapter_id, []).append(row)
    for adapter_id, rows in rows_of.items():
        head = head_of(adapter_id)
        if len(rows) == tokens.shape[0]:
            logits = head(tokens, layout)
        else:
            logits = head(tokens.index_select(0, index_tensor(rows, tokens.device)), layout)
        for i, row in enumerate(rows):
            out[row] = logits[i]
    return out
