"""What one adapter consists of, by arithmetic: its tensor names and shapes, its stack key, sizes.

The one place these are computed: the bank (loads, byte estimates), checkpoint validation (uploads,
saves) and the parameter table all ask here, so a checkpoint that validates is one the bank
accepts. Nothing is allocated: sites are built on the ``meta`` device, heads by arithmetic.
Threads: any (upload validation runs beside the engine's thread); the memo is an ``lru_cache``,
which is thread-safe, and the meta build's device scope is per thread.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Mapping

from lookaside.adapters import get_method
from lookaside.adapters.base import AdapterConfig
from lookaside.adapters.head import HeadConfig
from lookaside.adapters.stack import AdapterStack
from lookaside.backbone_config import BackboneConfig

__all__ = [
    "HEAD_PREFIX",
    "SHAPES_CACHE_SIZE",
    "clear_cache",
    "expected_shapes",
    "head_shapes",
    "numel",
    "site_shapes",
    "stack_key",
    "total_numel",
]

HEAD_PREFIX = "head."
"""Checkpoint key prefix of the classification head's tensors."""
SHAPES_CACHE_SIZE = 256
"""(method, config, backbone) combinations whose site shapes are remembered."""


def numel(shape: Iterable[int]) -> int:
    """Elements of a tensor of ``shape`` (Python ints: no overflow)."""
    return math.prod(shape)


def total_numel(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Elements of every tensor in ``shapes``."""
    return sum(math.prod(s) for s in shapes.values())


def stack_key(method: str, config: AdapterConfig) -> str | None:
    """The bank stack an adapter of (``method``, parsed ``config``) lives in; None for a head-only
    method (it has no stack). One stack per (method, config): equal configs share one.

    The key is a ``nn.ModuleDict`` key, which may not contain ``.``: the config's JSON is hashed.
    """
    if get_method(method).head_only:
        return None
    digest = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]
    return f"{method}_{digest}"


def expected_shapes(
    backbone_cfg: BackboneConfig,
    method: str,
    config: AdapterConfig | Mapping[str, object],
    head: HeadConfig,
) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes one adapter of ``method``/``config``/``head`` consists of (sites
    as ``blocks.<i>.<position>.<param>``, the head as ``head.<param>``); a fresh dict per call.

    Call :func:`lookaside.checkpoint.limits.check_manifest_limits` first for input from outside:
    a meta build still costs Python objects per block and site.

    Raises:
        ConfigError: the config does not fit this method or backbone.
    """
    spec = get_method(method)
    cfg = spec.parse_config(config)
    shapes: dict[str, tuple[int, ...]] = {}
    if not spec.head_only:
        shapes.update(site_shapes(backbone_cfg, spec.name, cfg))
    shapes.update(head_shapes(head, backbone_cfg.embed_dim))
    return shapes


def head_shapes(head: HeadConfig, embed_dim: int) -> dict[str, tuple[int, ...]]:
    """The head's tensors under their checkpoint names (``head.*``)."""
    return {HEAD_PREFIX + k: s for k, s in head.shapes(embed_dim).items()}


def site_shapes(
    backbone_cfg: BackboneConfig, method: str, config: AdapterConfig
) -> dict[str, tuple[int, ...]]:
    """The sites' tensors of one slot (:meth:`AdapterStack.shapes_of`), memoised: a meta build
    of a ViT-B stack costs ~10 ms of Python, the same for every adapter of one config.

    Keyed by the config's JSON (a config may hold a dict, which does not hash).
    """
    return dict(_site_shapes(method, _ConfigKey(config), backbone_cfg))


def clear_cache() -> None:
    """Forget the memoised site shapes (tests that patch :class:`AdapterStack`)."""
    _site_shapes.cache_clear()


class _ConfigKey:
    """A config that hashes and compares by its class and JSON (the memo key)."""

    __slots__ = ("config", "_key")

    def __init__(self, config: AdapterConfig) -> None:
        self.config = config
        self._key = (type(config), config.model_dump_json())

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ConfigKey) and self._key == other._key


@functools.lru_cache(maxsize=SHAPES_CACHE_SIZE)
def _site_shapes(
    method: str, key: _ConfigKey, backbone_cfg: BackboneConfig
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    shapes = AdapterStack.shapes_of(get_method(method), key.config, backbone_cfg)  # meta device
    return tuple(shapes.items())
