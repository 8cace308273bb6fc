"""Tier budgets (service.tiers.budget): settings win; derived defaults follow free memory, the
device kind and the replicas on the node; the startup note says where each number came from."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from service.tiers import Budgets, derive_budgets, mem_available
from service.tiers.budget import ASSUMED_AVAILABLE, format_bytes

GiB = 1 << 30


def test_settings_win() -> None:
    budgets = derive_budgets("cuda:0", 40 * GiB, 64 * GiB, 4, 123, 456)
    assert (budgets.device, budgets.host) == (123, 456)
    assert budgets.note == "adapter tiers: device 123 B (set), host 456 B (set; pinned)"


def test_cuda_takes_half_the_free_device_memory_and_a_pinned_host_share() -> None:
    budgets = derive_budgets("cuda:0", 4 * GiB, 16 * GiB, 1, None, None)
    assert budgets == Budgets(
        device=2 * GiB,
        host=4 * GiB,
        note="adapter tiers: device 2.0 GiB (derived: 50 % of 4.0 GiB free on cuda:0), "
        "host 4.0 GiB (derived: 25 % of 16.0 GiB available; pinned)",
    )


def test_replicas_on_a_node_divide_host_memory_not_each_ones_device() -> None:
    budgets = derive_budgets("cuda:1", 10 * GiB, 16 * GiB, 4, None, None)
    assert (budgets.device, budgets.host) == (5 * GiB, 1 * GiB)
    assert "25 % of 16.0 GiB available / 4 replicas" in budgets.note
    cpu = derive_budgets("cpu", None, 16 * GiB, 2, None, None)
    assert cpu.device == 2 * GiB  # the device tier is host RAM on a CPU


def test_on_cpu_both_tiers_share_the_ram() -> None:
    small = derive_budgets("cpu", None, 16 * GiB, 1, None, None)
    assert (small.device, small.host) == (4 * GiB, 2 * GiB)  # 25 % and 12.5 %
    assert small.note.endswith("host 2.0 GiB (derived: 12.5 % of 16.0 GiB available; in RAM)")
    large = derive_budgets("cpu", None, 128 * GiB, 1, None, None)
    assert (large.device, large.host) == (8 * GiB, 4 * GiB)  # both capped: 8 and 4 GiB
    assert "capped" in large.note
    two = derive_budgets("cpu", None, 16 * GiB, 2, None, None)
    assert (two.device, two.host) == (2 * GiB, 1 * GiB)  # per replica on the node
    set_both = derive_budgets("cpu", None, 16 * GiB, 1, 1 * GiB, 0)
    assert (set_both.device, set_both.host) == (1 * GiB, 0)
    assert "device 1.0 GiB (set)" in set_both.note


def test_unknown_memory_is_assumed_and_said() -> None:
    budgets = derive_budgets("cuda:0", None, None, 1, None, None)
    assert budgets.device == GiB // 2
    assert budgets.host == ASSUMED_AVAILABLE // 4
    assert "1.0 GiB (assumed) free" in budgets.note
    assert "4.0 GiB (assumed)" in budgets.note


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="device_bytes"):
        derive_budgets("cpu", None, GiB, 1, -1, None)
    with pytest.raises(ValueError, match="host_bytes"):
        derive_budgets("cpu", None, GiB, 1, None, -1)
    with pytest.raises(ValueError, match="replicas_per_node"):
        derive_budgets("cpu", None, GiB, 0, None, None)


def test_format_bytes() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1536, 64 << 20, 3 * GiB // 2)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "64.0 MiB",
        "1.5 GiB",
    ]


def test_mem_available_reads_meminfo_and_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  999 kB\nMemAvailable:   123 kB\n")
    assert mem_available(meminfo) == 123 * 1024
    monkeypatch.setattr(
        "os.sysconf", lambda name: {"SC_AVPHYS_PAGES": 5, "SC_PAGE_SIZE": 4096}[name]
    )
    assert mem_available(tmp_path / "missing") == 5 * 4096
    meminfo.write_text("MemAvailable: lots\n")
    assert mem_available(meminfo) == 5 * 4096

    def unsupported(name: str) -> int:
        raise ValueError(name)

    monkeypatch.setattr("os.sysconf", unsupported)
    assert mem_available(tmp_path / "missing") is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/meminfo")
def test_mem_available_on_this_machine() -> None:
    available = mem_available()
    assert available is not None
    assert available > 0
