"""Parameter counts of the papers' configurations, and the README table staying true."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookaside.adapters import ADAPTERS, HeadConfig
from lookaside.backbones import PRESETS
from lookaside.bank import HEAD_PREFIX, AdapterBank
from lookaside.docblock import read_block
from training.param_table import PAPER_CONFIGS, backbone_params, table

VIT_B = PRESETS["vit_base_patch16"]


def _site_params(method: str, config: dict[str, object]) -> int:
    shapes = AdapterBank(VIT_B).expected_shapes(method, config, HeadConfig(num_classes=2))
    total = 0
    for name, shape in shapes.items():
        if not name.startswith(HEAD_PREFIX):
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


@pytest.mark.parametrize(
    ("method", "config", "paper_params", "paper_percent"),
    [
        ("loaa", {"rank": 36, "kernels": "attn:T"}, 2.026e6, 2.3),
        ("loaa", {"rank": 36, "kernels": "attn:T,ffn:F"}, None, 5.0),
        ("loaa", {"rank": 72, "kernels": "attn:T,ffn:F"}, None, 10.0),
        ("bottleneck", {"rank": 108, "sites": ["attn", "ffn"]}, None, 5.0),
        ("soft_moa", {"num_experts": 14, "rank": 1}, 0.535e6, None),
    ],
)
def test_paper_parameter_budgets(
    method: str, config: dict[str, object], paper_params: float | None, paper_percent: float | None
) -> None:
    params = _site_params(method, config)
    percent = 100 * params / backbone_params(VIT_B)
    if paper_params is not None:  # the papers' counts include small extras (heads): within 5 %
        assert abs(params - paper_params) / paper_params < 0.05, params
    if paper_percent is not None:  # the papers round to 2 / 5 / 10 %
        assert abs(percent - paper_percent) < 0.7, percent


def test_every_method_appears_in_the_table() -> None:
    assert {m for m, _, _ in PAPER_CONFIGS} == set(ADAPTERS)


def test_readme_table_is_current() -> None:
    block = read_block(Path(__file__).parents[3] / "README.md", "params")
    assert block == table(), "README table is stale: run `make params` and commit"
