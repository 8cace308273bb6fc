"""The backbone under ``torch.export`` (dynamic frame axis) and ``torch.compile`` (no graph break).

The position embedding is resampled per token grid; in eager mode the result is cached in a dict,
which cannot be traced with a symbolic frame count. These tests keep the traced paths working: an
exported program serves clips of any length (a multiple of the patch stride) with the eager
result, and dynamo captures the whole forward, with or without a route, as one graph.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.backends.debugging import ExplainOutput
from torch.export import Dim

from lookaside.adapters.head import HeadConfig
from lookaside.adapters.prompt import PromptConfig
from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.sites import Route


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    torch._dynamo.reset()


def test_export_with_dynamic_frames_matches_eager(tiny_backbone: VisionTransformer) -> None:
    stride = tiny_backbone.cfg.patch_stride[1]
    steps = Dim("time_patches", min=2, max=64)
    example = torch.randn(2, 6 * stride, 128)
    program = torch.export.export(
        tiny_backbone,
        (example,),
        dynamic_shapes={"spec": {0: Dim("batch", min=1, max=32), 1: stride * steps}},
    )
    exported = program.module()
    # 4 and 16 time patches (resampled from the stored 8), and the stored grid itself.
    for batch, frames in [(3, 4 * stride), (1, 16 * stride), (2, 8 * stride)]:
        spec = torch.randn(batch, frames, 128)
        with torch.no_grad():
            expected = tiny_backbone(spec)
            got = exported(spec)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # the program really is specialised on nothing but the declared axes
    with pytest.raises(Exception, match="time_patches|spec"):
        exported(torch.randn(1, 70 * stride, 128))


def _explain(backbone: VisionTransformer, spec: torch.Tensor, route: Route | None) -> ExplainOutput:
    with torch.no_grad():
        explanation: ExplainOutput = torch._dynamo.explain(backbone)(spec, route)
    return explanation


def test_compile_has_no_graph_break_without_route(tiny_backbone: VisionTransformer) -> None:
    spec = torch.randn(2, 64, 128)  # 8 x 4 grid: the resampled position embedding is traced
    explanation = _explain(tiny_backbone, spec, None)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compile_has_no_graph_break_with_a_mixed_route(tiny_backbone: VisionTransformer) -> None:
    """Rows with two LoRA adapters of one stack and a row without adapter, in one graph."""
    bank = AdapterBank(tiny_backbone.cfg)
    for i, adapter_id in enumerate(["a", "b"]):
        bank.add(adapter_id, "lora", {"rank": 2}, HeadConfig(num_classes=3), seed=i + 1)
    spec = torch.randn(3, 64, 128)
    with bank.route(["a", "b", None]) as route:
        explanation = _explain(tiny_backbone, spec, route)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_compile_has_no_graph_break_with_late_prompts(tiny_backbone: VisionTransformer) -> None:
    """Prompt tokens opened before block 2 (``prompt_start``) inside the captured graph."""
    bank = AdapterBank(tiny_backbone.cfg)
    bank.add("p", "prompt", PromptConfig(num_tokens=3, layers=(2, 3)), HeadConfig(num_classes=3))
    spec = torch.randn(2, 64, 128)
    with bank.route(["p", "p"]) as route:
        assert route.prompt_start == 2
        explanation = _explain(tiny_backbone, spec, route)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        with torch.no_grad():
            compiled = torch.compile(tiny_backbone, backend="eager", fullgraph=True)
            torch.testing.assert_close(
                compiled(spec, route), tiny_backbone(spec, route), atol=1e-6, rtol=0
            )
