"""Backbone architectures, registered by name in one explicit table (timm's ``register_model``
idea, without import-time side effects).

An architecture turns a :class:`~lookaside.backbone_config.BackboneConfig` into a frozen model
whose blocks expose the adapter sites (:mod:`lookaside.sites`). Today there is one, the plain ViT;
a hierarchical backbone would be one module plus one line in :data:`ARCHITECTURES`, and the
loaders in :mod:`lookaside.backbones` build through :func:`build_backbone` only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lookaside.backbone import VisionTransformer
from lookaside.backbone_config import BackboneConfig
from lookaside.errors import ConfigError

__all__ = ["ARCHITECTURES", "DEFAULT_ARCHITECTURE", "BackboneArch", "build_backbone", "get_arch"]


@dataclass(frozen=True)
class BackboneArch:
    """A registered backbone architecture."""

    name: str
    build: Callable[[BackboneConfig, str], VisionTransformer]
    """(config, source string) -> the frozen model, weights not loaded yet."""
    summary: str = ""
    """One line for tables and ``--help``."""


VIT = BackboneArch(
    "vit",
    lambda cfg, source: VisionTransformer(cfg, source=source),
    "Vision Transformer (timm layout) over spectrograms, and frames with an RGB kernel",
)


def _registry(*archs: BackboneArch) -> dict[str, BackboneArch]:
    table: dict[str, BackboneArch] = {}
    for a in archs:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", a.name):
            raise ConfigError(f"backbone architecture name {a.name!r} must be lower_snake_case")
        if a.name in table:
            raise ConfigError(f"backbone architecture {a.name!r} registered twice")
        table[a.name] = a
    return table


ARCHITECTURES: dict[str, BackboneArch] = _registry(VIT)
DEFAULT_ARCHITECTURE = "vit"
"""The architecture of every backbone config today (a config does not name one yet)."""


def get_arch(name: str) -> BackboneArch:
    """The registered architecture called ``name``."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(
            f"unknown backbone architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}"
        ) from None


def build_backbone(
    cfg: BackboneConfig, source: str, arch: str = DEFAULT_ARCHITECTURE
) -> VisionTransformer:
    """A frozen backbone of architecture ``arch`` for ``cfg`` (weights: the caller loads them)."""
    return get_arch(arch).build(cfg, source)
