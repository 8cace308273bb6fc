"""Batched per-row adapter kernels; tests compare each with a plain-PyTorch reference.

Every op takes weights stacked over slots (``[S, ...]``) and a :class:`SlotIndex` saying which slot
each row uses. Three execution paths give the same numbers (tests compare them):

- uniform: all rows use one slot -> the slot's weights are indexed once, a plain batched matmul;
- gathered: rows use different slots -> per-row weights gathered, one ``baddbmm``;
- reference: a Python loop over rows with ``F.linear`` (:func:`rows_linear_reference`) or
  ``F.conv2d`` (the grid convolution's, in the tests: ``tests/unit/lookaside/grid_reference.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lookaside.adapters.slot_index import SlotIndex
from lookaside.sites import TokenLayout


def rows_linear(x: Tensor, weight: Tensor, bias: Tensor | None, index: SlotIndex) -> Tensor:
    """Per-row affine map.

    Semantics: ``out[i] = x[i] @ weight[slot[i]] + bias[slot[i]]``.

    Args:
        x: ``[n, L, Din]``.
        weight: ``[S, Din, Dout]`` (input-major, so the gathered copy feeds ``bmm`` directly).
        bias: ``[S, Dout]`` or None.
        index: slot per row.
    """
    w = index.take(weight)
    if index.uniform is not None:
        # One GEMM over all rows' tokens, bias fused (addmm), no per-row weight copies.
        flat = x.reshape(-1, x.shape[-1])
        out = flat @ w if bias is None else torch.addmm(bias[index.uniform], flat, w)
        return out.view(*x.shape[:-1], w.shape[-1])
    if bias is None:
        return torch.bmm(x, w)
    return torch.baddbmm(bias[index.slots].unsqueeze(1), x, w)


def rows_linear_reference(
    x: Tensor, weight: Tensor, bias: Tensor | None, slots: list[int]
) -> Tensor:
    """Reference for :func:`rows_linear`: one ``F.linear`` per row."""
    rows = [
        F.linear(x[i], weight[s].T, None if bias is None else bias[s]) for i, s in enumerate(slots)
    ]
    return torch.stack(rows)


def grid_unfold(x: Tensor, layout: TokenLayout, kernel: tuple[int, int]) -> Tensor:
    """Gather each token's grid neighbours so a conv becomes a linear map.

    Semantics: for a ``(kh, kw)`` kernel (odd sides), patch token at grid position ``(f, t)`` gets
    ``concat_{i<kh, j<kw} x[f + i - kh//2, t + j - kw//2]`` (zero outside the grid): tap-major,
    channel-minor, exactly the receptive field of ``F.conv2d(..., padding=(kh//2, kw//2))``. Special
    tokens (CLS, DIST, prompts) have no grid position: each is treated as a 1x1 grid with zero
    padding, so only the centre tap sees it (as Convpass does for its CLS token).

    Args:
        x: ``[n, L, C]`` with ``L = layout.num_tokens``.
        layout: where the grid starts and its shape.
        kernel: ``(kh, kw)``; ``(1, 3)`` looks along time, ``(3, 1)`` along frequency.

    Returns:
        ``[n, L, kh * kw * C]``.
    """
    kh, kw = kernel
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel sides must be odd, got {kernel}")
    if kernel == (1, 1):
        return x
    n, _, C = x.shape
    s = layout.num_special
    fg, tg = layout.grid
    special, grid = x[:, :s], x[:, s:]
    image = grid.reshape(n, fg, tg, C)
    padded = F.pad(image, (0, 0, kw // 2, kw // 2, kh // 2, kh // 2))
    taps = [padded[:, i : i + fg, j : j + tg] for i in range(kh) for j in range(kw)]
    grid_out = torch.cat(taps, dim=-1).reshape(n, fg * tg, kh * kw * C)
    centre = (kh // 2) * kw + kw // 2
    special_out = special.new_zeros(n, s, kh * kw * C)
    special_out[..., centre * C : (centre + 1) * C] = special
    return torch.cat([special_out, grid_out], dim=1)


def grid_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    index: SlotIndex,
    layout: TokenLayout,
    kernel: tuple[int, int],
) -> Tensor:
    """Per-row convolution over the token grid with stacked unfolded weights.

    Semantics: ``rows_linear(grid_unfold(x, layout, kernel), weight, bias, index)``, i.e. a
    ``(kh, kw)`` conv with zero padding on the grid and the centre tap for special tokens.

    When channels shrink (``Cin > Cout``, LoAA's down projection) the taps are applied to the
    projected output instead: ``x`` is read once into ``[n, L, taps*Cout]`` and the shifted slices
    are summed, which avoids materialising a ``taps``-times wider copy of the ``Cin``-wide input.

    Args:
        x: ``[n, L, Cin]``; weight: ``[S, taps*Cin, Cout]`` tap-major; bias: ``[S, Cout]``.
    """
    kh, kw = kernel
    taps = kh * kw
    cout = weight.shape[-1]
    cin = weight.shape[-2] // taps
    if taps == 1 or cin <= cout:
        return rows_linear(grid_unfold(x, layout, kernel), weight, bias, index)
    # Gather first (only the slots in use), then [taps*Cin, Cout] -> [Cin, taps*Cout]:
    # project once, shift the narrow outputs.
    w = index.take(weight)
    lead = w.shape[:-2]
    per_tap = w.reshape(*lead, taps, cin, cout).transpose(-3, -2).reshape(*lead, cin, taps * cout)
    y = x @ per_tap if index.uniform is not None else torch.bmm(x, per_tap)
    n, L, _ = y.shape
    s = layout.num_special
    fg, tg = layout.grid
    centre = (kh // 2) * kw + kw // 2
    special = y[:, :s, centre * cout : (centre + 1) * cout]
    grid = y[:, s:].reshape(n, fg, tg, taps, cout)
    padded = F.pad(grid, (0, 0, 0, 0, kw // 2, kw // 2, kh // 2, kh // 2))
    out = padded[:, 0:fg, 0:tg, 0]
    for tap in range(1, taps):
        i, j = divmod(tap, kw)
        out = out + padded[:, i : i + fg, j : j + tg, tap]
    result = torch.cat([special, out.reshape(n, fg * tg, cout)], dim=1)
    if bias is None:
        return result
    b = bias[index.uniform] if index.uniform is not None else bias[index.slots].unsqueeze(1)
    return result + b


def rows_gather(stacked: Tensor, index: SlotIndex, n: int) -> Tensor:
    """Per-row copy of slot tensors: ``[n, *stacked.shape[1:]]`` (broadcast view when uniform)."""
    if index.uniform is not None:
        return stacked[index.uniform].unsqueeze(0).expand(n, *stacked.shape[1:])
    return stacked[index.slots]
