"""The backbone with its adapter sites as one exportable graph whose adapters are *inputs*.

The torch engine routes rows with a :class:`~lookaside.bank.route.RowRoute` built in Python per
batch (which rows use which stack, at which slot). An exported graph cannot branch on Python
values, so here the same routing travels as tensors, one triple per stack of the graph:

- ``s<k>.rows``  ``[n_k]`` int64: the batch rows that use stack ``k``;
- ``s<k>.slots`` ``[n_k]`` int64: the slot each of those rows reads;
- ``s<k>.scale`` ``[n_k]`` float: 1 for a real row, 0 for the one placeholder row a stack gets
  when no row of the batch uses it (a graph has a fixed set of stacks, a batch uses some);

and every stacked slot tensor of stack ``k`` is the input ``s<k>.<parameter name>`` (its slot
axis dynamic). A hot swap writes into the bank's slot tensors exactly as the torch engine does;
the next run binds them again: nothing is re-exported. Every site runs through the method's own
``forward`` / ``forward_cross`` (the same code the torch engine runs), on the gathered slot of
each row (``SlotIndex(uniform=None)``: the per-row path, since which rows share a slot is data).

Semantics (same as ``RowRoute``): ``out[i] = out[i] + site_k(x[i], slot_k(i))`` for every stack
``k`` that routes row ``i``; prompt tokens of routed rows are replaced by their stack's prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lookaside.adapters.slot_index import SlotIndex
from lookaside.adapters.stack import AdapterStack
from lookaside.backbone import VisionTransformer
from lookaside.sites import SitePosition, TokenLayout

__all__ = ["ROUTING", "GraphGroup", "GraphRoute", "RoutedFeatures"]

ROUTING = ("rows", "slots", "scale")
"""Per-stack routing inputs, in graph order."""


@dataclass(frozen=True)
class GraphGroup:
    """The rows of one batch that one stack routes, as tensors."""

    stack: AdapterStack
    rows: Tensor
    index: SlotIndex
    scale: Tensor


class GraphRoute:
    """A :class:`lookaside.sites.Route` whose routing is tensors (traceable, exportable)."""

    def __init__(
        self, batch_size: int, groups: Sequence[GraphGroup], num_prompts: int, prompt_start: int
    ) -> None:
        self.batch_size = batch_size
        self.groups = list(groups)
        self.num_prompts = num_prompts
        self.prompt_start = prompt_start

    def add_to(
        self, layer: int, position: SitePosition, x: Tensor, out: Tensor, layout: TokenLayout
    ) -> Tensor:
        parts = []
        for g in self.groups:
            site = g.stack.site(layer, position)
            if site is not None:
                delta = site(x.index_select(0, g.rows), g.index, layout)
                parts.append((g.rows, _scaled(delta.to(out.dtype), g.scale)))
        return _add_rows(out, parts)

    def add_cross(
        self,
        layer: int,
        x: Tensor,
        other: Tensor,
        out: Tensor,
        layout: TokenLayout,
        other_layout: TokenLayout,
    ) -> Tensor:
        parts = []
        for g in self.groups:
            site = g.stack.site(layer, "attn.cross")
            if site is not None:
                xs, os = x.index_select(0, g.rows), other.index_select(0, g.rows)
                delta = site.forward_cross(xs, os, g.index, layout, other_layout)
                parts.append((g.rows, _scaled(delta.to(out.dtype), g.scale)))
        return _add_rows(out, parts)

    def write_prompts(self, layer: int, x: Tensor, layout: TokenLayout) -> Tensor:
        start, stop = layout.num_prefix, layout.num_special
        prompts = x[:, start:stop]
        changed = False
        for g in self.groups:
            site = g.stack.site(layer, "tokens")
            if site is None:
                continue
            old = prompts.index_select(0, g.rows)
            new = site(x.index_select(0, g.rows), g.index, layout).to(old.dtype)
            # a placeholder row (scale 0) writes back what it read
            prompts = prompts.index_copy(0, g.rows, old + _scaled(new - old, g.scale))
            changed = True
        if not changed:
            return x
        return torch.cat([x[:, :start], prompts, x[:, stop:]], dim=1)


def _add_rows(out: Tensor, parts: list[tuple[Tensor, Tensor]]) -> Tensor:
    """``out`` plus every stack's rows' deltas, in one scatter (an exported scatter copies the
    whole of ``out``, so one per site instead of one per stack and site). Rows may repeat (a
    placeholder row): the scatter adds, it does not overwrite."""
    if not parts:
        return out
    if len(parts) == 1:
        rows, delta = parts[0]
    else:
        rows = torch.cat([r for r, _ in parts])
        delta = torch.cat([d for _, d in parts])
    return out.index_add(0, rows, delta)


def _scaled(delta: Tensor, scale: Tensor) -> Tensor:
    return delta * scale.to(delta.dtype).view(-1, *([1] * (delta.dim() - 1)))


class RoutedFeatures(nn.Module):
    """``forward_features`` (or ``forward_features_av``) of the frozen backbone with the sites of
    ``stacks``, taking the routing and every slot tensor as inputs (see the module docstring).

    Input order: ``spec`` [, ``pixels``], then per stack its routing triple and its slot tensors.
    Outputs: the final tokens ``[n, L, D]`` (audio-visual: audio tokens, then visual tokens).
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        stacks: Sequence[AdapterStack],
        *,
        audio_visual: bool = False,
        num_prompts: int = 0,
        prompt_start: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.stacks = nn.ModuleList(stacks)
        self.audio_visual = audio_visual
        self.num_prompts = num_prompts
        self.prompt_start = prompt_start
        self._params = [[name for name, _ in stack.named_parameters()] for stack in stacks]

    def input_names(self) -> list[str]:
        """Graph input names in :meth:`forward`'s order."""
        names = ["spec", "pixels"] if self.audio_visual else ["spec"]
        for k, params in enumerate(self._params):
            names += [f"s{k}.{name}" for name in (*ROUTING, *params)]
        return names

    def output_names(self) -> list[str]:
        return ["audio", "visual"] if self.audio_visual else ["tokens"]

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        streams = 2 if self.audio_visual else 1
        spec, rest = inputs[0], list(inputs[streams:])
        groups: list[GraphGroup] = []
        params: dict[str, Tensor] = {}
        for k, stack in enumerate(self.stacks):
            assert isinstance(stack, AdapterStack)
            rows, slots, scale = rest[: len(ROUTING)]
            names = self._params[k]
            tensors = rest[len(ROUTING) : len(ROUTING) + len(names)]
            rest = rest[len(ROUTING) + len(names) :]
            params.update({f"stacks.{k}.{n}": t for n, t in zip(names, tensors, strict=True)})
            groups.append(GraphGroup(stack, rows, SlotIndex(slots, None), scale))
        route = GraphRoute(spec.shape[0], groups, self.num_prompts, self.prompt_start)
        with torch.nn.utils.stateless._reparametrize_module(self, params):
            if self.audio_visual:
                (audio, _), (visual, _) = self.backbone.forward_features_av(spec, inputs[1], route)
                return audio, visual
            tokens, _ = self.backbone.forward_features(spec, route)
            return tokens
