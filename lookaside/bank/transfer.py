"""Host -> device copies of one adapter into its reserved slot (the bank's ``load``).

One packed copy per adapter, not one per tensor (an adapter has dozens): the tensors are
flattened into one host buffer, moved once and split into views on the device; the slot then
copies device-to-device. On CUDA the buffer is pinned and everything runs on a side stream that
first waits for the current stream (which zeroed the slot); an event recorded after the copy is
what ``publish`` makes the current stream wait on, and the pinned buffer is kept until then.
A :class:`~lookaside.bank.packed.PackedAdapter` already is such a buffer (:meth:`copy_packed`:
nothing is packed again).

Threads: :meth:`Transfer.copy_in` and :meth:`Transfer.copy_packed` run on whichever thread loads
(the engine's loader); the side stream is created lazily by the first copy and dropped when the
bank moves (:meth:`reset`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lookaside.adapters.head import AdapterHead
from lookaside.adapters.shapes import HEAD_PREFIX
from lookaside.adapters.stack import AdapterStack
from lookaside.bank.packed import pack

if TYPE_CHECKING:
    from lookaside.bank.packed import PackedAdapter

__all__ = ["Transfer", "is_on", "wait_for_copy", "write_slot"]


class Transfer:
    """Copies adapters to ``device`` in ``dtype`` (the bank's storage dtype)."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device = device
        self.dtype = dtype
        self._stream: Any = None
        """The CUDA side stream (created by the first CUDA copy)."""

    def reset(self, device: torch.device, dtype: torch.dtype) -> None:
        """The bank moved: later copies go to ``device`` in ``dtype`` on a new side stream."""
        self.device, self.dtype, self._stream = device, dtype, None

    def copy_in(
        self,
        slot: int,
        stack: AdapterStack | None,
        head: AdapterHead,
        tensors: Mapping[str, Tensor],
    ) -> tuple[Any, Tensor | None]:
        """Write ``tensors`` (checkpoint names) into ``slot`` of ``stack`` and into ``head``.

        Returns:
            (event, staging): on CUDA the event to wait on before the slot is read and the pinned
            buffer to keep alive until then; ``(None, None)`` when the copy is already done.
        """
        if all(is_on(t, self.device) for t in tensors.values()):
            if self.device.type != "cuda":
                write_slot(slot, stack, head, dict(tensors))
                return None, None
            # Already on the device: copy slot-wise on the side stream; the caller may free
            # its tensors as soon as we return, so the allocator must wait for this stream.
            stream = self._side_stream()
            for t in tensors.values():
                t.record_stream(stream)
            with torch.cuda.stream(stream):
                write_slot(slot, stack, head, dict(tensors))
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record(stream)
            return event, None
        names = sorted(tensors)
        numels = [tensors[n].numel() for n in names]
        cuda = self.device.type == "cuda"
        host = pack(tensors, names, numels, dtype=self.dtype, pin=cuda)

        def split(flat: Tensor) -> dict[str, Tensor]:
            views = torch.split(flat, numels)
            return {n: v.view(tensors[n].shape) for n, v in zip(names, views, strict=True)}

        return self._copy_flat(slot, stack, head, host, split)

    def copy_packed(
        self, slot: int, stack: AdapterStack | None, head: AdapterHead, packed: PackedAdapter
    ) -> tuple[Any, Tensor | None]:
        """Write a packed adapter into ``slot`` and ``head`` without packing it again: one copy
        of its buffer (CUDA: on the side stream, asynchronous from pinned memory; the buffer is
        the staging to keep until the event is waited on), or on the CPU the slot and head
        copied from views of the buffer itself (converted first only if the dtype differs).

        Returns:
            (event, staging) as :meth:`copy_in`.
        """
        return self._copy_flat(slot, stack, head, packed.buffer, packed.split)

    def _copy_flat(
        self,
        slot: int,
        stack: AdapterStack | None,
        head: AdapterHead,
        host: Tensor,
        split: Callable[[Tensor], dict[str, Tensor]],
    ) -> tuple[Any, Tensor | None]:
        """Move one flat host buffer to the device, split it by ``split`` and write the slot."""
        if self.device.type != "cuda":
            write_slot(slot, stack, head, split(host.to(self.device, self.dtype)))
            return None, None
        stream = self._side_stream()
        with torch.cuda.stream(stream):
            moved = host.to(self.device, self.dtype, non_blocking=True)
            write_slot(slot, stack, head, split(moved))
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(stream)
        return event, host

    def _side_stream(self) -> Any:
        """The side stream, after it waited for the current stream (which zeroed the slot)."""
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        return self._stream


def wait_for_copy(device: torch.device, event: Any) -> None:
    """Make the current stream of ``device`` wait for a copy's event (None: nothing pending)."""
    if event is not None:
        torch.cuda.current_stream(device).wait_event(event)


def write_slot(
    slot: int, stack: AdapterStack | None, head: AdapterHead, on_device: dict[str, Tensor]
) -> None:
    """Copy device tensors into the slot's sites and the ``head.*`` ones into the head."""
    if stack is not None:
        stack.load_slot(slot, on_device)
    head.load_state_dict(
        {k.removeprefix(HEAD_PREFIX): v for k, v in on_device.items() if k.startswith(HEAD_PREFIX)}
    )


def is_on(tensor: Tensor, device: torch.device) -> bool:
    """``tensor`` lives on ``device`` (an index-less ``cuda`` means any CUDA device here: the
    copy then goes through the current one)."""
    return tensor.device.type == device.type and (
        device.index is None or tensor.device.index == device.index
    )
