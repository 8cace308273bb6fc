"""The bank's records of one adapter: a :class:`Reservation` while it loads, a :class:`BankEntry`
once it is published (routable). Threads: a reservation moves between the threads that reserve,
load and publish it (the engine's worker and loader); the bank's lock orders its state changes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from lookaside.adapters.base import AdapterConfig
from lookaside.adapters.head import AdapterHead, HeadConfig
from lookaside.errors import ConfigError

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

    def check(
        self,
        bank: int,
        reservations: Mapping[str, Reservation],
        states: str | tuple[str, ...],
        action: str,
    ) -> None:
        """Refuse a step out of order (reserve -> load -> publish, or abort before publishing)
        or a reservation of another bank (``bank``: that bank's ``id``)."""
        if self._bank != bank:
            raise ConfigError(f"reservation for {self.adapter_id!r} is not of this bank")
        allowed = (states,) if isinstance(states, str) else states
        if self.state not in allowed:
            raise ConfigError(
                f"cannot {action} adapter {self.adapter_id!r}: it is {self.state} "
                f"(order: reserve -> load -> publish, or abort before publishing)"
            )
        assert reservations.get(self.adapter_id) is self
