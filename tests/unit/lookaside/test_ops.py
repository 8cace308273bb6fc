"""Batched per-row kernels against their plain-PyTorch references."""

from __future__ import annotations

import pytest
import torch

from lookaside.adapters.ops import (
    grid_conv,
    grid_unfold,
    rows_linear,
    rows_linear_reference,
)
from lookaside.adapters.slot_index import SlotIndex
from lookaside.sites import TokenLayout
from tests.unit.lookaside.grid_reference import grid_conv_reference


@pytest.mark.parametrize("slots", [[0, 0, 0, 0], [2, 0, 1, 2], [1]])
@pytest.mark.parametrize("with_bias", [True, False])
def test_rows_linear_matches_reference(slots: list[int], with_bias: bool) -> None:
    x = torch.randn(len(slots), 7, 5)
    w = torch.randn(3, 5, 4)
    b = torch.randn(3, 4) if with_bias else None
    got = rows_linear(x, w, b, SlotIndex.of(slots, x.device))
    torch.testing.assert_close(got, rows_linear_reference(x, w, b, slots), atol=1e-6, rtol=1e-5)


def test_slot_index_uniform_detection() -> None:
    assert SlotIndex.of([3, 3], torch.device("cpu")).uniform == 3
    assert SlotIndex.of([3, 1], torch.device("cpu")).uniform is None


@pytest.mark.parametrize("kernel", [(1, 3), (3, 1), (3, 3), (1, 1)])
@pytest.mark.parametrize(("num_prefix", "num_prompts"), [(1, 0), (2, 0), (1, 3)])
def test_grid_unfold_is_conv2d(kernel: tuple[int, int], num_prefix: int, num_prompts: int) -> None:
    layout = TokenLayout(num_prefix=num_prefix, num_prompts=num_prompts, grid=(4, 6))
    cin, cout = 5, 3
    x = torch.randn(2, layout.num_tokens, cin)
    w = torch.randn(kernel[0] * kernel[1] * cin, cout)
    b = torch.randn(cout)
    got = grid_unfold(x, layout, kernel) @ w + b
    torch.testing.assert_close(
        got, grid_conv_reference(x, layout, w, b, kernel), atol=1e-5, rtol=1e-5
    )


def test_time_kernel_mixes_only_along_time() -> None:
    """A (1,3) kernel couples a token with its time neighbours and nothing on other rows."""
    layout = TokenLayout(num_prefix=1, num_prompts=0, grid=(3, 4))
    x = torch.zeros(1, layout.num_tokens, 1)
    x[0, 1 + 1 * 4 + 2] = 1.0  # grid (f=1, t=2)
    taps = grid_unfold(x, layout, (1, 3))[0, :, :].sum(-1).reshape(-1)[1:].reshape(3, 4)
    expected = torch.zeros(3, 4)
    expected[1, 1:4] = 1.0
    torch.testing.assert_close(taps, expected)
    freq = grid_unfold(x, layout, (3, 1))[0].sum(-1)[1:].reshape(3, 4)
    expected = torch.zeros(3, 4)
    expected[0:3, 2] = 1.0
    torch.testing.assert_close(freq, expected)


@pytest.mark.parametrize("kernel", [(1, 3), (3, 1), (3, 3)])
@pytest.mark.parametrize(("cin", "cout"), [(12, 3), (3, 12)])
@pytest.mark.parametrize("slots", [[1, 1, 1], [0, 2, 1]])
def test_grid_conv_matches_conv2d_per_row(
    kernel: tuple[int, int], cin: int, cout: int, slots: list[int]
) -> None:
    """Both execution orders (shift-then-project, project-then-shift) equal F.conv2d."""
    layout = TokenLayout(num_prefix=2, num_prompts=1, grid=(3, 5))
    taps = kernel[0] * kernel[1]
    x = torch.randn(len(slots), layout.num_tokens, cin)
    w = torch.randn(3, taps * cin, cout)
    b = torch.randn(3, cout)
    got = grid_conv(x, w, b, SlotIndex.of(slots, x.device), layout, kernel)
    for i, s in enumerate(slots):
        expected = grid_conv_reference(x[i : i + 1], layout, w[s], b[s], kernel)[0]
        torch.testing.assert_close(got[i], expected, atol=1e-5, rtol=1e-5)
