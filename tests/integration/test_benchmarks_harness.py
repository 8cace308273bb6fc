"""The benchmark harness runs end to end (on a tiny backbone: timings are not asserted here)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.run import main


def test_harness_runs_every_suite_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    main(
        [
            "--preset",
            "test_vit",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--batches",
            "1",
            "2",
            "--json",
            str(out),
        ]
    )
    results = json.loads(out.read_text())
    names = {(r["suite"], r["name"], r["dtype"]) for r in results}
    for dtype in ("fp32", "bf16"):
        for variant in ("backbone_only", "a_one_loaa_2pct", "b_8_mixed_methods", "c_8_same_method"):
            assert ("adapters", variant, dtype) in names
    assert ("bank", "add_last8", "fp32") in names
    ratios = [r["ratio"] for r in results if r["suite"] == "adapters"]
    assert all(r > 0 for r in ratios)
    assert all(r["value"] > 0 for r in results)
