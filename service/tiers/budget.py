"""Budgets of the adapter tiers in bytes: set explicitly, or derived from free memory at startup.

Derived defaults (an explicit setting always wins, tier by tier):

- **device**, CUDA: half the device memory free after the backbone and warm-up (the other half
  is left for activations and runtime arenas). CPU: the device tier *is* host RAM, so
  ``min(25 % of MemAvailable, 8 GiB)``.
- **host**: CUDA ``min(25 % of MemAvailable, 16 GiB)`` of pinned (unswappable) memory; CPU
  ``min(12.5 % of MemAvailable, 4 GiB)``. The host tier is inclusive (it may hold a copy of a
  device-resident adapter, so an eviction from the device costs nothing to undo); on CPU both
  tiers come out of the same RAM, hence its smaller share there.
- Replicas on one node start together and each sees the same free host memory, so host-memory
  shares are divided by ``replicas_per_node``. Each CUDA replica measures its own device after
  its own backbone loaded, so the device share is not divided.

:func:`mem_available` reads MemAvailable from ``/proc/meminfo`` (Linux), else the free pages
that ``os.sysconf`` reports, else None (then :data:`ASSUMED_AVAILABLE` is used and said so).
Threads: pure functions, called once at startup.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ASSUMED_AVAILABLE", "Budgets", "derive_budgets", "format_bytes", "mem_available"]

GiB = 1 << 30
DEVICE_FREE_SHARE = 0.5
"""Share of the free CUDA memory the device tier may take."""
HOST_SHARE = 0.25
"""Share of MemAvailable (per replica) each host-memory tier may take."""
CPU_DEVICE_CAP = 8 * GiB
HOST_CAP = 16 * GiB
CPU_HOST_SHARE = 0.125
"""Share of MemAvailable (per replica) the host tier takes on CPU (the device tier is RAM too)."""
CPU_HOST_CAP = 4 * GiB
ASSUMED_AVAILABLE = 4 * GiB
"""MemAvailable assumed when it cannot be read (said so in the note)."""
ASSUMED_DEVICE_FREE = 1 * GiB
"""Free CUDA memory assumed when it was not measured (said so in the note)."""


@dataclass(frozen=True)
class Budgets:
    """Bytes per tier, and one line for the startup log saying where each number came from."""

    device: int
    host: int
    note: str


def format_bytes(n: int) -> str:
    """``1.5 GiB``, ``64.0 MiB``, ``512 B``: sizes as the startup line prints them."""
    for unit, size in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def derive_budgets(
    device: str,
    free_device_bytes: int | None,
    mem_available_bytes: int | None,
    replicas_per_node: int,
    device_bytes: int | None,
    host_bytes: int | None,
) -> Budgets:
    """The device and host tier budgets for an engine on ``device`` (``"cpu"``, ``"cuda:0"``).

    ``free_device_bytes``: CUDA free memory after warm-up (ignored on CPU; None: unknown).
    ``mem_available_bytes``: the node's MemAvailable (None: unknown). ``device_bytes`` and
    ``host_bytes``: the settings (None: derive)."""
    for label, value in (("device_bytes", device_bytes), ("host_bytes", host_bytes)):
        if value is not None and value < 0:
            raise ValueError(f"{label} must be >= 0, got {value}")
    if replicas_per_node < 1:
        raise ValueError(f"replicas_per_node must be >= 1, got {replicas_per_node}")
    cuda = device.startswith("cuda")
    available = mem_available_bytes if mem_available_bytes is not None else ASSUMED_AVAILABLE
    shown = format_bytes(available) + ("" if mem_available_bytes is not None else " (assumed)")
    per = f" / {replicas_per_node} replicas" if replicas_per_node > 1 else ""
    share = int(HOST_SHARE * available) // replicas_per_node
    host_source = f"25 % of {shown} available{per}"

    if device_bytes is not None:
        dev, dev_why = device_bytes, "set"
    elif cuda:
        free = free_device_bytes if free_device_bytes is not None else ASSUMED_DEVICE_FREE
        assumed = "" if free_device_bytes is not None else " (assumed)"
        dev = int(DEVICE_FREE_SHARE * free)
        dev_why = f"derived: 50 % of {format_bytes(free)}{assumed} free on {device}"
    else:
        dev = min(share, CPU_DEVICE_CAP)
        dev_why = f"derived: {host_source}" + (", capped" if share > CPU_DEVICE_CAP else "")

    if host_bytes is not None:
        host, host_why = host_bytes, "set"
    elif cuda:
        host = min(share, HOST_CAP)
        host_why = f"derived: {host_source}" + (", capped" if share > HOST_CAP else "")
    else:
        cpu_share = int(CPU_HOST_SHARE * available) // replicas_per_node
        host = min(cpu_share, CPU_HOST_CAP)
        host_why = f"derived: 12.5 % of {shown} available{per}" + (
            ", capped" if cpu_share > CPU_HOST_CAP else ""
        )
    kind = "pinned" if cuda else "in RAM"
    note = (
        f"adapter tiers: device {format_bytes(dev)} ({dev_why}), "
        f"host {format_bytes(host)} ({host_why}; {kind})"
    )
    return Budgets(device=dev, host=host, note=note)


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable in bytes (Linux), else free physical pages (``os.sysconf``), else None."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                fields = line.split()
                scale = 1024 if len(fields) > 2 and fields[2].lower() == "kb" else 1
                return int(fields[1]) * scale
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None
