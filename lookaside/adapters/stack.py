"""AdapterStack: every slot of one (method, config) across all blocks, addressed by slot index."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lookaside.adapters.base import AdapterConfig, AdapterMethod, SiteContext, StackedSite
from lookaside.backbone_config import BackboneConfig
from lookaside.errors import ConfigError
from lookaside.sites import CLIP_LAYER, SITE_POSITIONS, SitePosition


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
            sites = method.make_sites(config, SiteContext.for_block(backbone_cfg, i, num_slots))
            unknown = set(sites) - set(SITE_POSITIONS)
            if unknown:
                raise ConfigError(f"method {method.name!r} names unknown sites {sorted(unknown)}")
            self.blocks[str(i)] = nn.ModuleDict({_key(p): s for p, s in sites.items()})
            self._lookup.update({(i, p): s for p, s in sites.items()})
        if method.make_clip_site is not None:
            clip = SiteContext.for_block(backbone_cfg, CLIP_LAYER, num_slots)
            self.clip = method.make_clip_site(config, clip)
            self._lookup[(CLIP_LAYER, "clip")] = self.clip

    @classmethod
    def allocate(
        cls,
        method: AdapterMethod,
        config: AdapterConfig,
        backbone_cfg: BackboneConfig,
        num_slots: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> AdapterStack:
        """A zeroed stack on ``device`` in ``dtype``, built on the meta device first (the config
        is validated and the shapes known before any memory is allocated)."""
        with torch.device("meta"):
            stack = cls(method, config, backbone_cfg, num_slots)
        stack.to(dtype=dtype).to_empty(device=device)
        with torch.no_grad():
            for p in stack.parameters():
                p.zero_()
        return stack

    def site(self, layer: int, position: SitePosition) -> StackedSite | None:
        """This stack's site at (block, position), if it has one."""
        return self._lookup.get((layer, position))

    def named_sites(self) -> list[tuple[str, StackedSite]]:
        """``blocks.<i>.<position>`` (and ``clip`` for a clip site) -> site, in a stable order."""
        return [
            (f"blocks.{layer}.{_key(pos)}" if layer != CLIP_LAYER else _key(pos), site)
            for (layer, pos), site in sorted(self._lookup.items())
        ]

    def init_slot(self, index: int, generator: torch.Generator) -> None:
        """Fresh initialisation of one slot (the method's paper init), drawn from ``generator``
        (a CPU generator: values are drawn on the host and copied to the stack's device)."""
        for _, site in self.named_sites():
            site.init_slot(index, generator)

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

    @staticmethod
    def shapes_of(
        method: AdapterMethod, config: AdapterConfig, backbone_cfg: BackboneConfig
    ) -> dict[str, tuple[int, ...]]:
        """:meth:`slot_shapes` of a stack that is never allocated (built on the meta device)."""
        with torch.device("meta"):
            return AdapterStack(method, config, backbone_cfg, 1).slot_shapes()

    def params_per_slot(self) -> int:
        """Trainable parameters of one adapter in this stack (heads excluded)."""
        return sum(math.prod(shape) for shape in self.slot_shapes().values())

    def resize(self, num_slots: int) -> None:
        """Grow every site to ``num_slots`` slots (new parameters: see ``StackedSite.resize``)."""
        for _, site in self.named_sites():
            site.resize(num_slots)
        self.num_slots = num_slots


def _key(position: SitePosition) -> str:
    return position.replace(".", "_")
