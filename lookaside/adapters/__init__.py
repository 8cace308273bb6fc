"""Adapter methods, registered by name in one explicit table.

Adding a method: one module (``<Method>Config`` + site class(es) + an :class:`AdapterMethod`
record) and one line in :data:`ADAPTERS`. The test matrix is parametrised over this table, so a new
method is tested the moment it is registered.
"""

from __future__ import annotations

import re

from lookaside.adapters.aat import AAT
from lookaside.adapters.avpea import AVPEA
from lookaside.adapters.base import AdapterConfig, AdapterMethod
from lookaside.adapters.bottleneck import BOTTLENECK
from lookaside.adapters.convpass import CONVPASS
from lookaside.adapters.head import HeadConfig
from lookaside.adapters.linear import LINEAR
from lookaside.adapters.loaa import LOAA
from lookaside.adapters.lora import LORA
from lookaside.adapters.moa import DENSE_MOA, SOFT_MOA
from lookaside.adapters.prompt import PROMPT
from lookaside.errors import ConfigError

__all__ = ["ADAPTERS", "AdapterConfig", "AdapterMethod", "HeadConfig", "get_method"]


def _registry(*methods: AdapterMethod) -> dict[str, AdapterMethod]:
    table: dict[str, AdapterMethod] = {}
    for m in methods:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", m.name):
            raise ConfigError(f"adapter method name {m.name!r} must be lower_snake_case")
        if m.name in table:
            raise ConfigError(f"adapter method {m.name!r} registered twice")
        if not issubclass(m.config_cls, AdapterConfig):
            raise ConfigError(f"{m.name}: config class must subclass AdapterConfig")
        table[m.name] = m
    return table


ADAPTERS: dict[str, AdapterMethod] = _registry(
    LINEAR,
    BOTTLENECK,
    LORA,
    CONVPASS,
    LOAA,
    DENSE_MOA,
    SOFT_MOA,
    AAT,
    PROMPT,
    AVPEA,
)


def get_method(name: str) -> AdapterMethod:
    """The registered method called ``name``."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown adapter method {name!r}; choose one of: {', '.join(ADAPTERS)}"
        ) from None
