"""The small interface every adapter method implements, and the per-batch route.

Shapes follow vLLM's stacked-LoRA layers: a site's parameters are ``[num_slots, ...]`` tensors, so
loading an adapter is a ``copy_`` into a free slot (no module surgery) and one batched kernel serves
rows that use different slots of the same method. Training uses the same classes with one slot.

A method is one module with ``<Method>Config`` (pydantic), one or more ``StackedSite`` subclasses
and an :class:`AdapterMethod` record registered in :mod:`lookaside.adapters`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from torch import Tensor, nn

from lookaside.adapters.ops import SlotIndex
from lookaside.backbone import SITE_POSITIONS, BackboneConfig, SitePosition, TokenLayout
from lookaside.errors import ConfigError

SubLayer = Literal["attn", "ffn"]


def _unique_sublayers(v: tuple[SubLayer, ...]) -> tuple[SubLayer, ...]:
    if not v or len(set(v)) != len(v):
        raise ValueError("sites must name 'attn' and/or 'ffn', each once")
    return v


SubLayers = Annotated[tuple[SubLayer, ...], AfterValidator(_unique_sublayers)]
"""Sub-layers an adapter runs beside: ``("attn",)`` (Pfeiffer), ``("attn", "ffn")`` (Houlsby)."""


class AdapterConfig(BaseModel):
    """Fields shared by every method's config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layers: tuple[int, ...] | None = None
    """Blocks that get the adapter (None: every block)."""

    def block_indices(self, depth: int) -> tuple[int, ...]:
        """The blocks this config adapts, validated against the backbone depth."""
        if self.layers is None:
            return tuple(range(depth))
        bad = [i for i in self.layers if not 0 <= i < depth]
        if bad:
            raise ConfigError(f"layers {bad} do not exist in a {depth}-block backbone")
        return tuple(sorted(set(self.layers)))

    def num_prompts(self) -> int:
        """Prompt tokens this adapter inserts (only prompt tuning inserts any)."""
        return 0


class HeadConfig(BaseModel):
    """The per-adapter classification head: LayerNorm + Linear on pooled tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_classes: int = Field(gt=0)
    """Output logits."""
    pool: Literal["cls", "mean"] = "cls"
    """``cls``: mean of the prefix tokens (CLS, or CLS and DIST as AST does); ``mean``: of the
    patch tokens."""
    multi_label: bool = False
    """Sigmoid per class (multi-label) instead of a softmax over classes."""


class AdapterHead(nn.Module):
    """LayerNorm + Linear, as AST's MLP head; one per adapter (class counts differ)."""

    def __init__(self, cfg: HeadConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Linear(embed_dim, cfg.num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def pool(self, tokens: Tensor, layout: TokenLayout) -> Tensor:
        """``[n, L, D]`` -> ``[n, D]`` by the configured pooling."""
        if self.cfg.pool == "cls":
            return tokens[:, : layout.num_prefix].mean(dim=1)
        return tokens[:, layout.num_special :].mean(dim=1)

    def forward(self, tokens: Tensor, layout: TokenLayout) -> Tensor:
        # The bank may store adapters in another dtype than the backbone's output (bf16 bank).
        return self.fc(self.norm(self.pool(tokens, layout).to(self.fc.weight.dtype)))

    def probabilities(self, logits: Tensor) -> Tensor:
        """Softmax, or per-class sigmoid for multi-label heads."""
        return logits.sigmoid() if self.cfg.multi_label else logits.softmax(dim=-1)


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
        """Re-allocate with more slots, keeping the existing ones."""
        for name, param in list(self.named_parameters(recurse=False)):
            grown = param.new_zeros(num_slots, *param.shape[1:])
            grown[: self.num_slots] = param.detach()
            setattr(self, name, nn.Parameter(grown, requires_grad=param.requires_grad))
        self.num_slots = num_slots

    def forward(self, x: Tensor, index: SlotIndex, layout: TokenLayout) -> Tensor:
        """The site's contribution for rows ``x`` (``[n, L, D]``), each with its own slot."""
        raise NotImplementedError


SiteFactory = Callable[[AdapterConfig, BackboneConfig, int], dict[SitePosition, StackedSite]]
"""(method config, backbone config, num_slots) -> this method's sites in one block."""


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

    def parse_config(self, raw: AdapterConfig | Mapping[str, object]) -> AdapterConfig:
        """Validate a config dict (e.g. from a manifest) into this method's config class."""
        if isinstance(raw, self.config_cls):
            return raw
        if isinstance(raw, AdapterConfig):
            raise ConfigError(
                f"method {self.name!r} takes {self.config_cls.__name__}, got {type(raw).__name__}"
            )
        return self.config_cls.model_validate(dict(raw))


class AdapterStack(nn.Module):
    """All slots of one method + one config (same tensor shapes), across every block."""

    def __init__(
        self,
        method: AdapterMethod,
        config: AdapterConfig,
        backbone_cfg: BackboneConfig,
        num_slots: int,
    ) -> None:
        super().__init__()
        self.method = method
        self.config = config
        self.num_slots = num_slots
        self.num_prompts = config.num_prompts()
        self.blocks = nn.ModuleDict()
        self._lookup: dict[tuple[int, SitePosition], StackedSite] = {}
        for i in config.block_indices(backbone_cfg.depth):
            sites = method.make_sites(config, backbone_cfg, num_slots)
            unknown = set(sites) - set(SITE_POSITIONS)
            if unknown:
                raise ConfigError(f"method {method.name!r} names unknown sites {sorted(unknown)}")
            self.blocks[str(i)] = nn.ModuleDict({_key(p): s for p, s in sites.items()})
            self._lookup.update({(i, p): s for p, s in sites.items()})

    def site(self, layer: int, position: SitePosition) -> StackedSite | None:
        """This stack's site at (block, position), if it has one."""
        return self._lookup.get((layer, position))

    def named_sites(self) -> list[tuple[str, StackedSite]]:
        """``blocks.<i>.<position>`` -> site, in a stable order."""
        return [
            (f"blocks.{layer}.{_key(pos)}", site)
            for (layer, pos), site in sorted(self._lookup.items())
        ]

    def init_slot(self, index: int, seed: int) -> None:
        """Fresh initialisation of one slot (the method's paper init)."""
        gen = torch.Generator().manual_seed(seed)
        for _, site in self.named_sites():
            site.init_slot(index, gen)

    def load_slot(self, index: int, tensors: Mapping[str, Tensor]) -> None:
        """Load ``blocks.<i>.<position>.<param>`` tensors into slot ``index``."""
        for prefix, site in self.named_sites():
            site.load_slot(index, {n: tensors[f"{prefix}.{n}"] for n in site.slot_shapes()})

    def clear_slot(self, index: int) -> None:
        """Zero slot ``index`` in every site."""
        for _, site in self.named_sites():
            site.clear_slot(index)

    def slot_tensors(self, index: int) -> dict[str, Tensor]:
        """All tensors of slot ``index``, keyed as in checkpoints."""
        out: dict[str, Tensor] = {}
        for prefix, site in self.named_sites():
            out.update({f"{prefix}.{n}": t for n, t in site.slot_tensors(index).items()})
        return out

    def slot_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected checkpoint tensors and their shapes for one slot."""
        out: dict[str, tuple[int, ...]] = {}
        for prefix, site in self.named_sites():
            out.update({f"{prefix}.{n}": s for n, s in site.slot_shapes().items()})
        return out

    def params_per_slot(self) -> int:
        """Trainable parameters of one adapter in this stack (heads excluded)."""
        total = 0
        for shape in self.slot_shapes().values():
            count = 1
            for d in shape:
                count *= d
            total += count
        return total

    def resize(self, num_slots: int) -> None:
        """Grow every site to ``num_slots`` slots."""
        for _, site in self.named_sites():
            site.resize(num_slots)
        self.num_slots = num_slots


def _key(position: SitePosition) -> str:
    return position.replace(".", "_")


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

    Built once per batch (by :meth:`lookaside.adapters.bank.AdapterBank.route`) and passed
    explicitly through the forward: there is no "active adapter" state anywhere.
    """

    batch_size: int
    groups: list[RouteGroup] = field(default_factory=list)
    num_prompts: int = 0

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
