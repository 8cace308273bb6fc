"""The cold-burst benchmark runs end to end against a real server process (tiny backbone, 40
adapters, a few seconds): its report's structure, every hot request answered, and one disk load
per cold adapter of the burst (its timings are not asserted here)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.cold_burst import main


def test_cold_burst_reports_both_phases_and_one_load_per_cold_adapter(tmp_path: Path) -> None:
    out = tmp_path / "burst.json"
    argv = ["--adapters", "40", "--burst", "20", "--burst-concurrency", "4"]
    argv += ["--rate", "10", "--seconds", "1", "--json", str(out)]
    returned = main(argv)
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    alone = report["alone"]
    assert alone["status"] == {"200": 10}
    assert 0 < alone["p50_ms"] <= alone["p99_ms"]
    for phase in ("warm_hot", "burst_hot"):  # the hot requests sent while a burst ran
        hot = report[phase]
        assert hot["status"] == ({"200": hot["requests"]} if hot["requests"] else {})
        assert hot["requests"] <= 10
    warm = report["warm"]
    assert (warm["requests"], warm["status"], warm["loads"]) == (20, {"200": 20}, 0)
    burst = report["burst"]
    assert burst["requests"] == 20
    assert burst["status"] == {"200": 20}
    assert burst["loads"] == 20  # each cold adapter loaded once, from disk
    assert report["hot"] == "a00"
