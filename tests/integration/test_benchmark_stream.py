"""The live-streaming benchmark runs end to end against a real server process (tiny backbone, a
few seconds of audio; its timings are not asserted here, only that every window arrived and
every number it reports is a real measurement)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.stream_lag import main, most_realtime, next_level


def test_stream_benchmark_reports_every_level(tmp_path: Path) -> None:
    out = tmp_path / "stream.json"
    argv = ["--backbones", "tiny", "--engines", "torch", "--sessions", "1", "3"]
    argv += ["--seconds", "2", "--hop", "0.5", "--ramp-steps", "0", "--json", str(out)]
    returned = main(argv)
    report = json.loads(out.read_text())
    assert report["runs"] == json.loads(json.dumps(returned["runs"]))
    [run] = report["runs"]
    assert (run["backbone"], run["engine"]) == ("tiny", "torch")
    assert run["startup_s"] > 0
    levels = {lv["sessions"]: lv for lv in run["levels"]}
    assert set(levels) == {1, 3}
    for n, lv in levels.items():
        # 2 s of audio, 1 s windows (995 ms) every 0.5 s: full windows at 0, 0.5 and 1 s, and the
        # tail [1.5, 2) cut at end -> 4 per session.
        assert lv["expected"] == 4 * n
        assert lv["windows"] == lv["expected"], lv
        assert lv["dropped"] == 0, lv
        assert lv["errors"] == [], lv
        for key in ("lag_p50_s", "lag_p99_s", "lag_max_s", "server_lag_p50_s", "server_lag_p99_s"):
            assert math.isfinite(lv[key]), (key, lv)
        # a window cannot be answered before its last frame was sent (at or after its end_s)
        assert 0 < lv["lag_p50_s"] <= lv["lag_p99_s"] <= lv["lag_max_s"] < 30
        assert 0 <= lv["server_lag_p50_s"] <= lv["server_lag_p99_s"] < 30
        assert lv["windows_per_s"] > 0
        assert 0 <= lv["other_cpu"] <= 1
        assert lv["realtime"] == (lv["lag_p99_s"] < 0.5)
    assert run["most_realtime_sessions"] == most_realtime(
        {n: lv["realtime"] for n, lv in levels.items()}
    )


def test_ramp_doubles_past_real_time_and_bisects_below_the_first_miss() -> None:
    assert next_level({}, 64) == 1
    assert next_level({1: True, 8: True, 32: True}, 64) == 64
    assert next_level({1: True, 8: True, 32: True, 64: True}, 64) is None
    assert next_level({1: True, 8: True, 32: False}, 64) == 16
    assert next_level({1: True, 8: True, 16: False, 32: False}, 64) == 11
    assert next_level({1: True, 2: False}, 64) is None
    assert next_level({1: False}, 64) is None
    assert most_realtime({1: True, 8: True, 16: False, 32: True}) == 8
    assert most_realtime({1: False, 8: True}) == 0
    assert most_realtime({1: True, 8: True, 32: True, 64: True}) == 64
