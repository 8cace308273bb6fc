"""The bank's records of one adapter: a :class:`Reservation` while it loads, a :class:`BankEntry`
once it is published (routable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from lookaside.adapters.base import AdapterConfig
from lookaside.adapters.head import AdapterHead, HeadConfig

__all__ = ["BankEntry", "Reservation", "ReservationState"]


@dataclass
class BankEntry:
    """Where one published adapter lives."""

    method: str
    config: AdapterConfig
    stack_key: str | None
    """Key of its stack (None for a head-only adapter: the linear probe)."""
    slot: int
    head_key: str


ReservationState = Literal["reserved", "loading", "loaded", "published", "aborted"]


@dataclass(eq=False)
class Reservation:
    """A slot (and a head) taken for one adapter that is not routable yet.

    Pass it to :meth:`AdapterBank.load`, then :meth:`AdapterBank.publish` (or
    :meth:`AdapterBank.abort` to give the slot back).
    """

    adapter_id: str
    method: str
    config: AdapterConfig
    head_config: HeadConfig
    stack_key: str | None
    slot: int
    """Slot in the stack (-1 for a head-only adapter)."""
    state: ReservationState = "reserved"
    head: AdapterHead | None = field(default=None, repr=False)
    _bank: int = field(default=0, repr=False)
    _event: Any = field(default=None, repr=False)
    """``torch.cuda.Event`` recorded after an asynchronous copy (None on the CPU)."""
    _staging: Tensor | None = field(default=None, repr=False)
    """Pinned host buffer of an asynchronous copy, kept alive until the copy is waited on."""
