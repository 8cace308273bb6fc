"""The README's library example runs as written (on the tiny backbone instead of a download)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lookaside.adapters import HeadConfig
from lookaside.backbones import load_backbone
from lookaside.bank import AdapterBank
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.features import FeatureConfig

ROOT = Path(__file__).parents[2]


def test_readme_library_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Using the library\n\n```python\n(.*?)```", readme, re.S)
    assert block is not None
    code = block.group(1).replace("timm:vit_base_patch16_224.augreg_in21k", "random:test_vit")
    # The checkpoint and the clip the example reads.
    backbone = load_backbone("random:test_vit")
    bank = AdapterBank(backbone.cfg)
    bank.add("esc", "soft_moa", {"num_experts": 2}, HeadConfig(num_classes=50))
    AdapterCheckpoint.from_bank(
        bank,
        "esc",
        name="esc50",
        version=3,
        task="environmental sounds",
        task_type="multiclass",
        labels=[f"c{i}" for i in range(50)],
        features=FeatureConfig(target_frames=512),
        backbone=backbone,
    ).save(tmp_path / "adapters_store" / "esc50" / "3")
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "dog.wav", rng.standard_normal(22050 * 5) * 0.1, 22050)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)
    logits = scope["logits"]
    assert isinstance(logits, list)
    assert [tuple(t.shape) for t in logits] == [(50,), (35,)]
