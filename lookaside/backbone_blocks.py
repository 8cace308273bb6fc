"""The modules of one ViT block (and the patch embedding), with timm's state-dict keys.

Kept apart from :mod:`lookaside.backbone` (which assembles them into the frozen model, its
position embeddings and the forward passes). :meth:`Block.forward` is where the adapter sites are
written out: each asks the batch's :class:`~lookaside.sites.Route` for every row's own
contribution (``route=None``: the plain ViT block). Threads: whichever runs the forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from lookaside.backbone_config import BackboneConfig
from lookaside.sites import Route, SitePosition, TokenLayout

__all__ = ["Attention", "Block", "Mlp", "PatchEmbed"]


class PatchEmbed(nn.Module):
    """Spectrogram ``[B, frames, mel]`` or frames ``[B, C, H, W]`` -> patch tokens ``[B, N, D]``
    (timm key ``proj``)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_stride
        )

    def forward(
        self, spec: Tensor, mono_weight: Tensor | None = None
    ) -> tuple[Tensor, tuple[int, int]]:
        """Spectrogram tokens; ``mono_weight`` is the 1-channel kernel when ``proj`` is RGB."""
        # AST layout: (B, frames, mel) -> image (B, 1, mel, frames); height = frequency.
        image = spec.transpose(1, 2).unsqueeze(1)
        if mono_weight is None:
            tokens = self.proj(image)
        else:
            tokens = F.conv2d(image, mono_weight, self.proj.bias, stride=self.proj.stride)
        grid = (tokens.shape[2], tokens.shape[3])
        return tokens.flatten(2).transpose(1, 2), grid

    def forward_image(self, pixels: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Frame tokens from ``[B, in_chans, H, W]`` normalised pixels (the stored kernel)."""
        tokens = self.proj(pixels)
        grid = (tokens.shape[2], tokens.shape[3])
        return tokens.flatten(2).transpose(1, 2), grid


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (timm keys)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, cfg.embed_dim * 3, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, h: Tensor, adapt_qkv: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        B, L, D = h.shape
        qkv = self.qkv(h)
        if adapt_qkv is not None:
            qkv = adapt_qkv(qkv)
        q, k, v = qkv.view(B, L, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class Mlp(nn.Module):
    """Two-layer GELU FFN (timm keys ``fc1``/``fc2``)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.mlp_hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.embed_dim)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(h)))


class Block(nn.Module):
    """Pre-norm transformer block with the adapter sites written out in the forward."""

    def __init__(self, cfg: BackboneConfig, index: int) -> None:
        super().__init__()
        self.index = index
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)

    def forward(
        self,
        x: Tensor,
        route: Route | None,
        layout: TokenLayout,
        other: Tensor | None = None,
        other_layout: TokenLayout | None = None,
    ) -> Tensor:
        """One block; ``other`` (two-stream forward) is the other stream's block input, handed to
        the ``attn.cross`` sites with ``other_layout``."""
        if route is None:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

        def site(position: SitePosition, inp: Tensor, out: Tensor) -> Tensor:
            # out + each row's own adapter contribution at this site
            return route.add_to(self.index, position, inp, out, layout)

        if layout.num_prompts:
            x = route.write_prompts(self.index, x, layout)
        h = self.norm1(x)
        y = self.attn(h, adapt_qkv=lambda qkv: site("attn.qkv", h, qkv))
        y = site("attn.parallel", h, y)
        y = site("attn.post", y, y)
        if other is not None:
            assert other_layout is not None
            y = route.add_cross(self.index, x, other, y, layout, other_layout)
        x = x + y
        h = self.norm2(x)
        y = self.mlp(h)
        y = site("ffn.parallel", h, y)
        return x + y
