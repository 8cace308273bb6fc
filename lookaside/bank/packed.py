"""One validated adapter packed for the bank: built once, loaded into a slot any number of times.

What the bank copies to its device is one flat host buffer holding every tensor of an adapter
(:mod:`~lookaside.bank.transfer`). Building it costs a check of every name and shape and a copy of
every tensor; a host-memory cache of adapters keeps a :class:`PackedAdapter` instead of the
checkpoint, so a reload from it does neither again, and no finite scan either: the only
constructor, :meth:`PackedAdapter.of`, takes a
:class:`~lookaside.checkpoint.ValidatedCheckpoint` (a type, not a flag: scanned by
``load_checkpoint`` or ``validate_checkpoint_bytes``).

Threads: built on any thread (a loader); nothing writes the buffer afterwards, so any number of
loads, on any threads, may read one packed adapter at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from lookaside.adapters.shapes import numel
from lookaside.checkpoint import ValidatedCheckpoint
from lookaside.checkpoint.finite import nonfinite_names
from lookaside.checkpoint.header import tensor_problems
from lookaside.checkpoint.manifest import AdapterManifest
from lookaside.errors import ConfigError, InvalidCheckpoint

__all__ = ["PackedAdapter", "check_tensors", "pack", "pinned_block_bytes"]


@dataclass(frozen=True, eq=False)
class PackedAdapter:
    """Every tensor of one adapter (sites and ``head.*``) in one flat 1-D host buffer."""

    manifest: AdapterManifest
    """What the adapter is (method, config, head: what a reservation for it needs)."""
    names: tuple[str, ...]
    """Tensor names (checkpoint keys) in buffer order: sorted."""
    shapes: tuple[tuple[int, ...], ...]
    """Shape of each tensor, in buffer order."""
    numels: tuple[int, ...]
    """Elements of each tensor, in buffer order (consecutive in the buffer)."""
    buffer: Tensor
    """The flat buffer: 1-D, in the dtype it was packed for, pinned when built with ``pin``."""
    nbytes: int
    """Bytes of the buffer's elements."""
    nbytes_allocated: int
    """Bytes the allocator reserves for the buffer: a pinned block is rounded up to a power of
    two by PyTorch's caching host allocator (:func:`pinned_block_bytes`); ``nbytes`` otherwise."""

    @classmethod
    def of(
        cls,
        ckpt: ValidatedCheckpoint,
        *,
        expected: Mapping[str, tuple[int, ...]],
        dtype: torch.dtype,
        pin: bool,
    ) -> PackedAdapter:
        """Check ``ckpt`` against the names and shapes a slot expects (what
        ``AdapterBank.expected_shapes`` gives for its manifest) and pack it with one copy.

        Args:
            ckpt: a validated checkpoint (its values were scanned: no finite scan here).
            expected: tensor name -> shape.
            dtype: the bank's storage dtype (a load in another dtype converts on the copy).
            pin: pinned host memory (CUDA only: an asynchronous copy to the device needs it).

        Raises:
            InvalidCheckpoint: a name is missing or unexpected, or a shape differs.
            ConfigError: ``dtype`` is not floating point, or ``pin`` without CUDA.
        """
        if not isinstance(ckpt, ValidatedCheckpoint):  # the type is the proof of the scan
            raise TypeError(f"PackedAdapter.of takes a ValidatedCheckpoint, not {type(ckpt)}")
        if not dtype.is_floating_point:
            raise ConfigError(f"adapters are stored in a floating-point dtype, got {dtype}")
        if pin and not torch.cuda.is_available():
            raise ConfigError("pinned host memory needs CUDA; pack with pin=False on the CPU")
        check_tensors(expected, ckpt.tensors, finite=False)
        names = tuple(sorted(expected))
        numels = tuple(numel(expected[n]) for n in names)
        buffer = pack(ckpt.tensors, names, numels, dtype=dtype, pin=pin)
        nbytes = buffer.numel() * buffer.element_size()
        return cls(
            manifest=ckpt.manifest,
            names=names,
            shapes=tuple(tuple(expected[n]) for n in names),
            numels=numels,
            buffer=buffer,
            nbytes=nbytes,
            nbytes_allocated=pinned_block_bytes(nbytes) if pin else nbytes,
        )

    def shape_map(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape (what the bank compares with its reservation's)."""
        return dict(zip(self.names, self.shapes, strict=True))

    def check_fits(self, expected: Mapping[str, tuple[int, ...]]) -> None:
        """Refuse a slot this adapter was not packed for (a dict comparison; the tensors were
        checked when packed).

        Raises:
            InvalidCheckpoint: names or shapes differ from ``expected``.
        """
        if self.shape_map() != {n: tuple(s) for n, s in expected.items()}:
            found = {n: (s, str(self.buffer.dtype), True) for n, s in self.shape_map().items()}
            problems = tensor_problems(expected, found)
            raise InvalidCheckpoint(
                f"packed adapter {self.manifest.id} does not fit this slot: " + "; ".join(problems)
            )

    def split(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of ``flat`` (the buffer, or its copy on a device) as the named tensors."""
        views = torch.split(flat, list(self.numels))
        return {n: v.view(s) for n, s, v in zip(self.names, self.shapes, views, strict=True)}

    def views(self) -> dict[str, Tensor]:
        """Views of the buffer itself as the named tensors (read them, never write them)."""
        return self.split(self.buffer)


def pack(
    tensors: Mapping[str, Tensor],
    names: tuple[str, ...] | list[str],
    numels: tuple[int, ...] | list[int],
    *,
    dtype: torch.dtype,
    pin: bool,
) -> Tensor:
    """``tensors[names]`` flattened into one new host buffer of ``dtype`` (pinned with ``pin``):
    one copy (with the dtype conversion) per tensor, straight into place."""
    packed = torch.empty(sum(numels), dtype=dtype, pin_memory=pin)
    offset = 0
    for name, size in zip(names, numels, strict=True):
        packed[offset : offset + size].copy_(tensors[name].detach().reshape(-1))
        offset += size
    return packed


def pinned_block_bytes(nbytes: int) -> int:
    """Bytes of the pinned block PyTorch's caching host allocator serves ``nbytes`` from: the
    next power of two (it keeps freed blocks for reuse, so these bytes stay pinned)."""
    return 1 << (nbytes - 1).bit_length() if nbytes > 0 else 0


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
