"""One case table per adapter method, shared by every test that builds adapters of each method.

Each method's row holds the configs the tests use (small, non-default, so shapes differ from the
defaults sized for ViT-B): the mixed-batch matrix (``test_adapters_matrix``), the paper-equation
oracles (``test_reference_oracles``) and checkpoint round trips. A registered audio method
missing here fails ``test_every_registered_method_has_cases``; audio-visual methods (two streams,
clips of segments) have their own cases in ``test_avpea``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lookaside.adapters import ADAPTERS

Config = dict[str, object]

AUDIO_METHODS = [m for m, spec in ADAPTERS.items() if "clip" in spec.tasks]
"""Methods of the one-stream (``clip``) task, in registration order."""


@dataclass(frozen=True)
class MethodCases:
    """The configs of one method's tests."""

    mixed: tuple[Config, ...]
    """Matrix configs: the first is every matrix test's default; the first two (the first one
    twice when alone) make two stacks in one mixed batch."""
    oracle: tuple[Config, ...]
    """Paper-equation oracle configs; together they use every site position the method can."""
    checkpoint: Config
    """Checkpoint round trips (``{}``: the method's defaults)."""


CASES: dict[str, MethodCases] = {
    "linear": MethodCases(mixed=({},), oracle=({},), checkpoint={}),
    "bottleneck": MethodCases(
        mixed=({"rank": 6}, {"rank": 4, "sites": ["attn"]}),
        oracle=(
            {"rank": 5, "sites": ["attn", "ffn"], "scale": 0.7},
            {"rank": 3, "sites": ["ffn"], "layers": [0, 2]},
        ),
        checkpoint={"rank": 4},
    ),
    "lora": MethodCases(
        mixed=({"rank": 4, "alpha": 8.0}, {"rank": 2}),
        oracle=({"rank": 4, "alpha": 6.0}, {"rank": 2, "layers": [1, 2]}),
        checkpoint={"rank": 4, "alpha": 8.0},
    ),
    "convpass": MethodCases(
        mixed=({"rank": 4}, {"rank": 3, "sites": ["ffn"]}),
        oracle=({"rank": 4, "sites": ["attn", "ffn"], "scale": 0.5},),
        checkpoint={"rank": 3},
    ),
    "loaa": MethodCases(
        mixed=({"rank": 5, "kernels": "attn:T,ffn:F"}, {"rank": 3, "kernels": "attn:F"}),
        oracle=(
            {"rank": 5, "kernels": "attn:T,ffn:F"},
            {"rank": 3, "kernels": "attn:F,ffn:L", "scale": 2.0},
        ),
        checkpoint={"rank": 5, "kernels": "attn:T,ffn:F"},
    ),
    "dense_moa": MethodCases(
        mixed=(
            {"num_experts": 3, "rank": 2},
            {"num_experts": 2, "rank": 1, "sites": ["attn", "ffn"]},
        ),
        oracle=({"num_experts": 3, "rank": 2, "sites": ["attn", "ffn"]},),
        checkpoint={"num_experts": 3, "rank": 2},
    ),
    "soft_moa": MethodCases(
        mixed=(
            {"num_experts": 3, "rank": 2, "slots_per_expert": 2},
            {"num_experts": 4, "rank": 1, "sites": ["attn", "ffn"]},
        ),
        oracle=({"num_experts": 3, "rank": 2, "slots_per_expert": 2, "sites": ["attn", "ffn"]},),
        checkpoint={"num_experts": 3, "rank": 2, "slots_per_expert": 2},
    ),
    "aat": MethodCases(
        mixed=({"rank": 6}, {"rank": 4, "layers": [1, 3], "spatial": False}),
        oracle=(
            {"rank": 6, "mlp_scale": 0.5},
            {"rank": 4, "layers": [1, 3]},
            {"rank": 5, "spatial": False},  # the MLP adapter alone
        ),
        checkpoint={"rank": 4, "layers": [1, 3]},
    ),
    "prompt": MethodCases(
        mixed=({"num_tokens": 3}, {"num_tokens": 2, "layers": [0, 2]}),
        oracle=({"num_tokens": 3}, {"num_tokens": 2, "layers": [1, 3]}),
        checkpoint={"num_tokens": 3, "layers": [0, 2]},
    ),
}


def first_config(method: str) -> Config:
    """The method's default matrix config."""
    return CASES[method].mixed[0]


def two_configs(method: str) -> tuple[Config, Config]:
    """Two configs of one method (the first twice when it has one)."""
    a, b = (list(CASES[method].mixed) * 2)[:2]
    return a, b


def oracle_cases() -> list[tuple[str, Config]]:
    """(method, config) of every oracle case, methods in table order."""
    return [(m, cfg) for m, cases in CASES.items() for cfg in cases.oracle]


def checkpoint_config(method: str) -> Config:
    """The config of a checkpoint round trip (``{}`` for a method without a row here)."""
    return CASES[method].checkpoint if method in CASES else {}


def case_id(method: str, cfg: Config) -> str:
    """A readable pytest id: ``lora-alpha=6.0-rank=4``."""
    return method + "".join(f"-{k}={v}" for k, v in sorted(cfg.items())).replace(" ", "")


def case_params(cases: list[tuple[str, Config]]) -> list[object]:
    """``pytest.param(method, cfg, id=...)`` for each case."""
    return [pytest.param(m, cfg, id=case_id(m, cfg)) for m, cfg in cases]
