"""Per-batch routing: which stack and slot each row of a batch uses.

A :class:`RowRoute` is built once per batch by the adapter bank and passed explicitly through the
backbone forward (it implements :class:`lookaside.sites.Route`): there is no "active adapter"
state anywhere. A route *holds* the slots it reads: the bank reuses a removed adapter's slot only
after every route holding it is released (:meth:`RowRoute.release`, or ``with bank.route(ids)``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lookaside.adapters.slot_index import SlotIndex
from lookaside.sites import SitePosition, TokenLayout

if TYPE_CHECKING:
    from lookaside.adapters.head import AdapterHead
    from lookaside.adapters.stack import AdapterStack


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

    Built once per batch (by :meth:`lookaside.bank.AdapterBank.route`) and passed
    explicitly through the forward: there is no "active adapter" state anywhere.
    """

    batch_size: int
    groups: list[RouteGroup] = field(default_factory=list)
    num_prompts: int = 0
    prompt_start: int = 0
    """First block that writes prompts (the backbone inserts prompt tokens just before it)."""
    heads: dict[str, AdapterHead] = field(default_factory=dict)
    """The head of every adapter the route uses, as it was when the route was built (a head
    removed from the bank meanwhile stays alive here until the route is dropped)."""
    _release: weakref.finalize[[], RowRoute] | None = field(default=None, repr=False)
    _on_release: Callable[[], None] | None = field(default=None, repr=False)

    def hold(self, release: Callable[[], None], on_collect: Callable[[], None]) -> None:
        """Bank use: ``release`` runs on :meth:`release`; ``on_collect`` if the route is garbage
        collected without being released (a safety net that never takes a lock)."""
        finalizer = weakref.finalize(self, on_collect)
        finalizer.atexit = False
        self._release = finalizer
        self._on_release = release

    def release(self) -> None:
        """Give the held slots back to the bank (idempotent; any thread)."""
        finalizer = self._release
        if (
            finalizer is not None
            and finalizer.detach() is not None
            and self._on_release is not None
        ):
            self._on_release()

    @property
    def released(self) -> bool:
        """True once released (or when the route never held anything)."""
        return self._release is None or not self._release.alive

    def __enter__(self) -> RowRoute:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

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
            add_into = getattr(site, "add_into", None)
            if add_into is not None:  # the site writes only the columns it changes (LoRA: q, v)
                xs = x if g.rows is None else x.index_select(0, g.rows)
                out = add_into(out, xs, g.index, g.rows, inplace)
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

    def add_cross(
        self,
        layer: int,
        x: Tensor,
        other: Tensor,
        out: Tensor,
        layout: TokenLayout,
        other_layout: TokenLayout,
    ) -> Tensor:
        """``out`` plus every row's own ``attn.cross`` contribution (two-stream forward).

        Semantics: ``result[i] = out[i] + site_{stack(i)}.forward_cross(x[i], other[i], slot(i))``
        for rows whose adapter has an ``attn.cross`` site at ``layer``, ``out[i]`` for the others;
        ``x`` is this stream's block input, ``other`` the other stream's (same rows).
        """
        inplace = not torch.is_grad_enabled()
        for g in self.groups:
            site = g.stack.site(layer, "attn.cross")
            if site is None:
                continue
            cross = site.forward_cross
            if g.rows is None:
                delta = cross(x, other, g.index, layout, other_layout).to(out.dtype)
                out = out.add_(delta) if inplace else out + delta
            else:
                xs, os = x.index_select(0, g.rows), other.index_select(0, g.rows)
                delta = cross(xs, os, g.index, layout, other_layout).to(out.dtype)
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
