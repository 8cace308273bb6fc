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
    variants = (
        "backbone_only",
        "a_one_loaa_2pct",
        "b_8_mixed_methods",
        "c_8_same_method",
        "lora_8_mixed",
        "lora_1_whole_batch",
        "peft_lora_8_mixed",
        "timm_backbone_only",
    )
    for dtype in ("fp32", "bf16"):
        for variant in variants:
            assert ("adapters", variant, dtype) in names
    assert ("bank", "add_last8", "fp32") in names
    for variant in ("linear_alone", "ours_8_mixed", "ours_1_whole_batch", "peft_8_mixed"):
        assert ("lora_site", variant, "fp32") in names
    adapters = [r for r in results if r["suite"] == "adapters"]
    assert all(r["ratio"] > 0 and r["ratio_q1"] <= r["ratio"] <= r["ratio_q3"] for r in adapters)
    assert all(r["value_q1"] <= r["value"] <= r["value_q3"] for r in adapters)
    # Our LoRA variants are compared with PEFT's in the same rounds.
    assert all(r["ratio_to_peft"] > 0 for r in adapters if r["name"].startswith("lora_"))
    assert all(r["value"] > 0 for r in results)
