"""Host -> device copies of one adapter into its reserved slot (the bank's ``load``).

One packed copy per adapter, not one per tensor (an adapter has dozens): the tensors are
flattened into one host buffer, moved once and split into views on the device; the slot then
copies device-to-device. On CUDA the buffer is pinned and everything runs on a side stream that
first waits for the current stream (which zeroed the slot); an event recorded after the copy is
what ``publish`` makes the current stream wait on, and the pinned buffer is kept until then.

Threads: :meth:`Transfer.copy_in` runs on whichever thread loads (the engine's loader); the side
stream is created lazily by the first copy and dropped when the bank moves (:meth:`reset`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lookaside.adapters.head import AdapterHead
from lookaside.adapters.shapes import HEAD_PREFIX
from lookaside.adapters.stack import AdapterStack
from lookaside.checkpoint.finite import nonfinite_names
from lookaside.checkpoint.header import tensor_problems
from lookaside.errors import InvalidCheckpoint

__all__ = ["Transfer", "check_tensors", "is_on", "wait_for_copy", "write_slot"]

_Packed = tuple[Tensor, list[str], list[int]]
"""(flat host buffer, tensor names in buffer order, element count of each)."""


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
        if self.device.type != "cuda":
            write_slot(slot, stack, head, self._packed(tensors))
            return None, None
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        if all(is_on(t, self.device) for t in tensors.values()):
            # Already on the device: copy slot-wise on the side stream; the caller may free
            # its tensors as soon as we return, so the allocator must wait for this stream.
            for t in tensors.values():
                t.record_stream(stream)
            with torch.cuda.stream(stream):
                write_slot(slot, stack, head, dict(tensors))
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record(stream)
            return event, None
        host = self._packed_host(tensors, pin=True)
        with torch.cuda.stream(stream):
            moved = _split(host, tensors, host[0].to(self.device, non_blocking=True))
            write_slot(slot, stack, head, moved)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(stream)
        return event, host[0]

    def _packed(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if all(is_on(t, self.device) for t in tensors.values()):
            return dict(tensors)
        host = self._packed_host(tensors, pin=False)
        return _split(host, tensors, host[0].to(self.device))

    def _packed_host(self, tensors: Mapping[str, Tensor], *, pin: bool) -> _Packed:
        names = sorted(tensors)
        sizes = [tensors[n].numel() for n in names]
        packed = torch.empty(sum(sizes), dtype=self.dtype, pin_memory=pin)
        offset = 0
        for n, size in zip(names, sizes, strict=True):
            packed[offset : offset + size].copy_(tensors[n].detach().reshape(-1))
            offset += size
        return packed, names, sizes


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


def _split(host: _Packed, tensors: Mapping[str, Tensor], moved: Tensor) -> dict[str, Tensor]:
    _, names, sizes = host
    views = torch.split(moved, sizes)
    return {n: v.view(tensors[n].shape) for n, v in zip(names, views, strict=True)}


def check_tensors(
    expected: Mapping[str, tuple[int, ...]], tensors: Mapping[str, Tensor], *, finite: bool
) -> None:
    """Refuse tensors that do not fit a slot before anything is written: names, shapes and
    dtypes against ``expected``, and (``finite``) every value of the expected tensors.

    Raises:
        InvalidCheckpoint: every problem found, in one message.
    """
    found = {
        n: (tuple(t.shape), str(t.dtype).removeprefix("torch."), t.is_floating_point())
        for n, t in tensors.items()
    }
    problems = tensor_problems(expected, found)
    if finite:  # a sum per tensor first
        known = {n: tensors[n] for n in expected if n in tensors}
        problems += [f"{n} contains NaN or Inf" for n in nonfinite_names(known)]
    if problems:
        raise InvalidCheckpoint("adapter tensors do not fit: " + "; ".join(problems))
