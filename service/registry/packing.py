"""What the registry asks of the bank without touching its slots: an adapter's device bytes
before it loads, and a validated checkpoint packed for the host tier.

Both are arithmetic or host-memory work on the bank's fixed facts (backbone shape, storage dtype,
device), so any thread may call them; nothing here reads or writes a slot (the engine's worker
owns those).
"""

from __future__ import annotations

from typing import Protocol

from lookaside.bank import AdapterBank
from lookaside.bank.packed import PackedAdapter
from lookaside.checkpoint import AdapterManifest, ValidatedCheckpoint
from service.store import AdapterStore

__all__ = ["AdapterPacking", "BankPacking", "device_bytes_of"]


class AdapterPacking(Protocol):
    """Sizes and packing for one engine's bank (:class:`BankPacking`)."""

    def device_bytes(self, manifest: AdapterManifest) -> int:
        """Device bytes the adapter takes once loaded (slot in every site + head)."""
        ...

    def pack(self, ckpt: ValidatedCheckpoint) -> PackedAdapter:
        """``ckpt`` checked against the bank's shapes and packed in its dtype (pinned on CUDA)."""
        ...


class BankPacking:
    """:class:`AdapterPacking` for an :class:`AdapterBank` (its shapes, dtype and device)."""

    def __init__(self, bank: AdapterBank) -> None:
        self._bank = bank

    def device_bytes(self, manifest: AdapterManifest) -> int:
        return self._bank.expected_bytes(manifest.method, manifest.config, manifest.head_config())

    def pack(self, ckpt: ValidatedCheckpoint) -> PackedAdapter:
        m = ckpt.manifest
        expected = self._bank.expected_shapes(m.method, m.config, m.head_config())
        return PackedAdapter.of(
            ckpt, expected=expected, dtype=self._bank.dtype, pin=self._bank.device.type == "cuda"
        )


def device_bytes_of(
    packing: AdapterPacking | None,
    source: AdapterManifest | AdapterStore,
    name: str,
    version: int,
) -> int:
    """Device bytes of ``name@version`` about to load, by arithmetic from its manifest (given,
    or from the store's index); 0 when unknown (no packing, or a manifest that does not parse:
    the load itself then reports why)."""
    if packing is None:
        return 0
    try:
        manifest = source if isinstance(source, AdapterManifest) else source.manifest(name, version)
        return packing.device_bytes(manifest)
    except Exception:
        return 0
