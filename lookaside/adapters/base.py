"""The small interface every adapter method implements: config, per-site module, method record.

Shapes follow vLLM's stacked-LoRA layers: a site's parameters are ``[num_slots, ...]`` tensors, so
loading an adapter is a ``copy_`` into a free slot (no module surgery) and one batched kernel serves
rows that use different slots of the same method. Training uses the same classes with one slot.

A method is one module with ``<Method>Config`` (pydantic), one or more ``StackedSite`` subclasses
and an :class:`AdapterMethod` record registered in :mod:`lookaside.adapters`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict
from torch import Tensor, nn

from lookaside.adapters.slot_index import SlotIndex
from lookaside.backbone_config import BackboneConfig
from lookaside.errors import ConfigError
from lookaside.sites import SitePosition, TokenLayout

SubLayer = Literal["attn", "ffn"]


def _some_layers(v: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if v is not None and not v:
        raise ValueError("layers must name at least one block, or be null for every block")
    return v


def _unique_sublayers(v: tuple[SubLayer, ...]) -> tuple[SubLayer, ...]:
    if not v or len(set(v)) != len(v):
        raise ValueError("sites must name 'attn' and/or 'ffn', each once")
    return v


SubLayers = Annotated[tuple[SubLayer, ...], AfterValidator(_unique_sublayers)]
"""Sub-layers an adapter runs beside: attn (Pfeiffer) or attn,ffn (Houlsby)."""


class AdapterConfig(BaseModel):
    """Fields shared by every method's config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layers: Annotated[tuple[int, ...] | None, AfterValidator(_some_layers)] = None
    """Blocks that get the adapter (None: every block)."""

    def block_indices(self, depth: int) -> tuple[int, ...]:
        """The blocks this config adapts, validated against the backbone depth."""
        if self.layers is None:
            return tuple(range(depth))
        bad = [i for i in self.layers if not 0 <= i < depth]
        if bad:
            raise ConfigError(f"layers {bad} do not exist in a {depth}-block backbone")
        return tuple(sorted(set(self.layers)))

    def first_layer(self, depth: int) -> int:
        """The first block this config adapts (prompt tokens are inserted just before it)."""
        return self.block_indices(depth)[0]

    def num_prompts(self) -> int:
        """Prompt tokens this adapter inserts (only prompt tuning inserts any)."""
        return 0


class StackedSite(nn.Module):
    """One adapter site of one method in one block, for all slots of a stack.

    Subclasses register parameters whose first dimension is the slot, implement
    :meth:`init_slot` (the paper's initialisation for one slot) and :meth:`forward`.
    """

    num_slots: int

    def __init__(self, num_slots: int) -> None:
        super().__init__()
        self.num_slots = num_slots

    def slot_param(self, *shape: int) -> nn.Parameter:
        """A zero ``[num_slots, *shape]`` parameter (frozen until the stack is made trainable)."""
        return nn.Parameter(torch.zeros(self.num_slots, *shape), requires_grad=False)

    def init_slot(self, index: int, generator: torch.Generator) -> None:
        """Fresh-adapter initialisation of one slot (default: all zeros)."""
        self.clear_slot(index)

    @staticmethod
    def uniform_slot(
        param: nn.Parameter, index: int, bound: float, generator: torch.Generator
    ) -> None:
        """Fill slot ``index`` of ``param`` with U(-bound, bound) drawn from ``generator``."""
        with torch.no_grad():
            param[index].copy_((torch.rand(param.shape[1:], generator=generator) * 2 - 1) * bound)

    def load_slot(self, index: int, tensors: Mapping[str, Tensor]) -> None:
        """Copy one adapter's tensors (no slot dimension) into slot ``index``."""
        with torch.no_grad():
            for name, param in self.named_parameters(recurse=False):
                param[index].copy_(tensors[name], non_blocking=True)

    def clear_slot(self, index: int) -> None:
        """Zero a slot so nothing of the old adapter stays on the device."""
        with torch.no_grad():
            for param in self.parameters(recurse=False):
                param[index].zero_()

    def slot_tensors(self, index: int) -> dict[str, Tensor]:
        """Detached copies of one slot's tensors (what a checkpoint stores)."""
        return {name: p[index].detach().clone() for name, p in self.named_parameters(recurse=False)}

    def slot_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected shape of each tensor of one slot."""
        return {name: tuple(p.shape[1:]) for name, p in self.named_parameters(recurse=False)}

    def resize(self, num_slots: int) -> None:
        """Re-allocate with more slots, keeping the existing ones.

        This replaces every parameter: only the bank calls it (``AdapterBank.grow``), between
        batches and never on a trainable bank (an optimiser would keep updating the old ones).
        """
        for name, param in list(self.named_parameters(recurse=False)):
            grown = param.new_zeros(num_slots, *param.shape[1:])
            grown[: self.num_slots] = param.detach()
            setattr(self, name, nn.Parameter(grown, requires_grad=param.requires_grad))
        self.num_slots = num_slots

    def forward(self, x: Tensor, index: SlotIndex, layout: TokenLayout) -> Tensor:
        """The site's contribution for rows ``x`` (``[n, L, D]``), each with its own slot."""
        raise NotImplementedError

    def forward_cross(
        self,
        x: Tensor,
        other: Tensor,
        index: SlotIndex,
        layout: TokenLayout,
        other_layout: TokenLayout,
    ) -> Tensor:
        """An ``attn.cross`` site's contribution for rows ``x`` given the other stream's tokens
        ``other`` of the same rows (two-stream methods only)."""
        raise NotImplementedError


@dataclass(frozen=True)
class SiteContext:
    """What a method's site factory builds for: one block of a backbone, and the slots per site.

    The block's index and token width come with it, so a backbone whose width changes per block
    (a hierarchical one) needs no change in any method: each factory sizes its sites by
    :attr:`width`, never by ``backbone.embed_dim``.
    """

    backbone: BackboneConfig
    layer: int
    """Block index (:data:`lookaside.sites.CLIP_LAYER` for a clip site, after the backbone)."""
    width: int
    """Token width ``D`` at this block."""
    num_slots: int
    """Slots of every parameter of the sites built (the stack's capacity)."""

    @classmethod
    def for_block(cls, backbone: BackboneConfig, layer: int, num_slots: int) -> SiteContext:
        """The context of block ``layer`` (a ViT has one width, ``embed_dim``, everywhere)."""
        return cls(backbone, layer, backbone.embed_dim, num_slots)


SiteFactory = Callable[[AdapterConfig, SiteContext], dict[SitePosition, StackedSite]]
"""(method config, block context) -> this method's sites in that block."""
ClipSiteFactory = Callable[[AdapterConfig, SiteContext], StackedSite]
"""(method config, clip context) -> the method's one ``clip`` site (run across the segments of a
clip after the backbone; checkpoint keys ``clip.<param>``)."""


@dataclass(frozen=True)
class AdapterMethod:
    """A registered method: its name, config class and the sites it builds per block."""

    name: str
    config_cls: type[AdapterConfig]
    make_sites: SiteFactory
    summary: str = ""
    """One line for tables and ``--help``."""
    head_only: bool = False
    """True when the method trains only the head (linear probe): no sites, no stack."""
    tasks: tuple[str, ...] = ("clip",)
    """The task kinds (:data:`lookaside.tasks.TASKS`) this method's adapters serve; the first is
    the one training and the server use it for (AV-PEA: ``av_events``)."""
    make_clip_site: ClipSiteFactory | None = None
    """The method's ``clip`` site, if it has one (a temporal model across segments)."""

    def parse_config(self, raw: AdapterConfig | Mapping[str, object]) -> AdapterConfig:
        """Validate a config dict (e.g. from a manifest) into this method's config class."""
        if isinstance(raw, self.config_cls):
            return raw
        if isinstance(raw, AdapterConfig):
            raise ConfigError(
                f"method {self.name!r} takes {self.config_cls.__name__}, got {type(raw).__name__}"
            )
        return self.config_cls.model_validate(dict(raw))
