"""A plain ``F.conv2d`` reference of a convolution over the token grid (no Lookaside kernel).

Adapter convolutions (AdaptFormer-style LoAA kernels, Convpass) store their weights unfolded,
``[kh*kw*Cin, Cout]`` (taps in row-major kernel order, channels inside each tap), and treat each
special token (CLS, DIST, prompts) as a 1x1 image: only the centre tap sees it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lookaside.sites import TokenLayout


def unfolded_to_conv(weight: Tensor, kernel: tuple[int, int]) -> Tensor:
    """``[kh*kw*Cin, Cout]`` unfolded weight -> ``[Cout, Cin, kh, kw]`` conv weight."""
    kh, kw = kernel
    taps_in, cout = weight.shape
    cin = taps_in // (kh * kw)
    return weight.reshape(kh, kw, cin, cout).permute(3, 2, 0, 1).contiguous()


def grid_conv_reference(
    x: Tensor, layout: TokenLayout, weight: Tensor, bias: Tensor | None, kernel: tuple[int, int]
) -> Tensor:
    """``kernel`` conv of rows ``x`` (``[n, L, Cin]``) with one unfolded ``weight`` and ``bias``
    (``[Cout]``): ``F.conv2d`` on the patch grid (zero padding) and on each special token."""
    kh, kw = kernel
    conv_w = unfolded_to_conv(weight, kernel)
    n, _, C = x.shape
    s = layout.num_special
    fg, tg = layout.grid
    image = x[:, s:].reshape(n, fg, tg, C).permute(0, 3, 1, 2)
    grid = F.conv2d(image, conv_w, bias, padding=(kh // 2, kw // 2))
    grid = grid.permute(0, 2, 3, 1).reshape(n, fg * tg, -1)
    special = x[:, :s].reshape(n * s, C, 1, 1)
    special = F.conv2d(special, conv_w, bias, padding=(kh // 2, kw // 2)).reshape(n, s, -1)
    return torch.cat([special, grid], dim=1)
