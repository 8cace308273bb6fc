"""AV-PEA: the audio-visual parameter-efficient adapter (AV-PEA paper, §3.2-3.3, Algorithm 1).

One frozen ViT runs a visual stream (frames, RGB kernel) and an audio stream (spectrogram, the
summed kernel) block by block (:meth:`lookaside.backbone.VisionTransformer.forward_features_av`).
In block ``l`` each stream ``s`` (other stream ``o``) gets, beside its attention (eq. 3-4),

    Y_s = X_s + MSA(X_s) + B_s
    B_s = h_s * f_s([X_cls^s + g_s * CA_s || X_p^s])                          (eq. 5-6)
    CA_s = Softmax(X_cls^s X_o^T) X_o                                          (eq. 7-8)
    f_s(t) = LN_out(ReLU(LN_in(t) W_down + b_down) W_up + b_up),  W_down: D -> d = D / 8

with ``X`` the block inputs (CLS, [DIST,] patches), the CLS token the only query (linear cost),
no ``1/sqrt(D)`` scaling (as the paper writes it), and the scalar gates ``g`` and ``h`` starting
at zero, so a fresh adapter leaves both streams exactly as the frozen ViT computes them. As in
Algorithm 1 the attended CLS keeps its residual (``X_cls + g * CA``) before the bottleneck.

Algorithm 1 puts a BatchNorm after each projection. Batch statistics would make a row's output
depend on the other rows of its batch (rows of other adapters, in a served mixed batch), and at
inference a BatchNorm is a per-channel affine map, which ``W_down``/``W_up`` and their biases
express exactly; so the projections here carry biases and there is no BatchNorm.

Per-second classification (AVE, §4.2): each one-second segment's two CLS tokens (after the final
norm) are averaged into one fused token; a small temporal transformer layer across the segments
of a clip (the ``clip`` site, :class:`TemporalSite`, width ``d``, output projection starting at
zero) adds context, then the adapter's head classifies every segment (``background`` is a class).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from lookaside.adapters.base import AdapterConfig, AdapterMethod, SiteContext, StackedSite
from lookaside.adapters.ops import rows_linear
from lookaside.adapters.slot_index import SlotIndex
from lookaside.backbone_config import BackboneConfig
from lookaside.errors import ConfigError
from lookaside.sites import Modality, SitePosition, TokenLayout

STREAMS: tuple[Modality, ...] = ("audio", "visual")
LN_EPS = 1e-5
"""LayerNorm epsilon of the adapter's norms (``nn.LayerNorm``'s default, as in Algorithm 1)."""


class AvpeaConfig(AdapterConfig):
    """AV-PEA in every block (the paper's setting: ``D = 8 d``, gates from zero)."""

    reduction: int = Field(8, ge=1, le=4096)
    """``D / d``: the bottleneck width is the backbone width divided by this (paper: 8)."""
    segments: int = Field(10, ge=1, le=600)
    """Most one-second segments per clip the temporal model sees (AVE: 10); longer videos are
    classified window by window."""
    temporal_heads: int = Field(4, ge=1, le=64)
    """Attention heads of the temporal layer; must divide its width ``d``."""

    def width(self, embed_dim: int) -> int:
        """Bottleneck width ``d`` on a backbone of width ``embed_dim``."""
        d = embed_dim // self.reduction
        if d < 1:
            raise ConfigError(
                f"reduction {self.reduction} leaves no bottleneck on a {embed_dim}-wide backbone; "
                f"use reduction <= {embed_dim}"
            )
        return d


def per_row(param: Tensor, index: SlotIndex) -> Tensor:
    """``param[slot]`` shaped to broadcast over ``[n, L, ...]`` rows (uniform: one slot)."""
    taken = index.take(param)
    return taken if index.uniform is not None else taken.unsqueeze(1)


def row_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, index: SlotIndex) -> Tensor:
    """LayerNorm over the last dim with each row's own affine parameters."""
    normed = F.layer_norm(x, (x.shape[-1],), eps=LN_EPS)
    return normed * per_row(weight, index) + per_row(bias, index)


class AvpeaSite(StackedSite):
    """The ``attn.cross`` site: one AV-PEA per stream in one block.

    Parameters per slot and stream ``s`` (``audio_*``, ``visual_*``): ``s_norm_in_weight/bias``
    ``[D]``, ``s_down`` ``[D, d]``, ``s_down_bias`` ``[d]``, ``s_up`` ``[d, D]``, ``s_up_bias``
    ``[D]``, ``s_norm_out_weight/bias`` ``[D]``, ``s_gate_cross`` ``[1]`` (g), ``s_gate_out``
    ``[1]`` (h).
    """

    def __init__(self, dim: int, width: int, num_slots: int) -> None:
        super().__init__(num_slots)
        for s in STREAMS:
            setattr(self, f"{s}_norm_in_weight", self.slot_param(dim))
            setattr(self, f"{s}_norm_in_bias", self.slot_param(dim))
            setattr(self, f"{s}_down", self.slot_param(dim, width))
            setattr(self, f"{s}_down_bias", self.slot_param(width))
            setattr(self, f"{s}_up", self.slot_param(width, dim))
            setattr(self, f"{s}_up_bias", self.slot_param(dim))
            setattr(self, f"{s}_norm_out_weight", self.slot_param(dim))
            setattr(self, f"{s}_norm_out_bias", self.slot_param(dim))
            setattr(self, f"{s}_gate_cross", self.slot_param(1))
            setattr(self, f"{s}_gate_out", self.slot_param(1))

    def _p(self, stream: Modality, name: str) -> nn.Parameter:
        param: nn.Parameter = getattr(self, f"{stream}_{name}")
        return param

    def init_slot(self, index: int, generator: torch.Generator) -> None:
        """Identity norms, ``nn.Linear``-style uniform projections, zero biases and gates.

        ``W_up`` is random, not zero: the gate ``h`` silences the fresh adapter, and a zero
        ``W_up`` would feed a constant into ``LN_out`` (zero output, zero gradient for ``h``).
        """
        self.clear_slot(index)
        with torch.no_grad():
            for s in STREAMS:
                self._p(s, "norm_in_weight")[index].fill_(1.0)
                self._p(s, "norm_out_weight")[index].fill_(1.0)
                for name in ("down", "up"):
                    param = self._p(s, name)
                    bound = 1.0 / math.sqrt(param.shape[1])
                    self.uniform_slot(param, index, bound, generator)

    def forward_cross(
        self,
        x: Tensor,
        other: Tensor,
        index: SlotIndex,
        layout: TokenLayout,
        other_layout: TokenLayout,
    ) -> Tensor:
        """``B_s`` for stream ``layout.modality`` from its block input ``x`` ``[n, L, D]`` and the
        other stream's block input ``other`` ``[n, M, D]``."""
        s = layout.modality
        cls = x[:, :1]
        # eq. 7-8: the CLS token attends over every token of the other stream (softmax in fp32)
        scores = torch.bmm(cls.float(), other.float().transpose(1, 2))
        attended = torch.bmm(scores.softmax(dim=-1).to(other.dtype), other)
        cls = cls + per_row(self._p(s, "gate_cross"), index) * attended
        tokens = torch.cat([cls.to(x.dtype), x[:, 1:]], dim=1)
        h = row_layer_norm(tokens, self._p(s, "norm_in_weight"), self._p(s, "norm_in_bias"), index)
        z = F.relu(rows_linear(h, self._p(s, "down"), self._p(s, "down_bias"), index))
        out = rows_linear(z, self._p(s, "up"), self._p(s, "up_bias"), index)
        out = row_layer_norm(out, self._p(s, "norm_out_weight"), self._p(s, "norm_out_bias"), index)
        return per_row(self._p(s, "gate_out"), index) * out


class TemporalSite(StackedSite):
    """The ``clip`` site: one pre-norm transformer layer of width ``d`` across the segments.

    ``z + W_out(layer(LN(z) W_in + pos))`` on the fused per-segment tokens ``z`` ``[n, S, D]``;
    ``W_out`` starts at zero, so a fresh temporal model passes ``z`` through unchanged.
    """

    def __init__(self, dim: int, width: int, segments: int, heads: int, num_slots: int) -> None:
        super().__init__(num_slots)
        self.heads = heads
        self.segments = segments
        self.norm_weight = self.slot_param(dim)
        self.norm_bias = self.slot_param(dim)
        self.in_proj = self.slot_param(dim, width)
        self.in_bias = self.slot_param(width)
        self.pos = self.slot_param(segments, width)
        self.attn_norm_weight = self.slot_param(width)
        self.attn_norm_bias = self.slot_param(width)
        self.qkv = self.slot_param(width, 3 * width)
        self.qkv_bias = self.slot_param(3 * width)
        self.attn_proj = self.slot_param(width, width)
        self.attn_proj_bias = self.slot_param(width)
        self.mlp_norm_weight = self.slot_param(width)
        self.mlp_norm_bias = self.slot_param(width)
        self.fc1 = self.slot_param(width, 2 * width)
        self.fc1_bias = self.slot_param(2 * width)
        self.fc2 = self.slot_param(2 * width, width)
        self.fc2_bias = self.slot_param(width)
        self.out_proj = self.slot_param(width, dim)
        self.out_bias = self.slot_param(dim)

    def init_slot(self, index: int, generator: torch.Generator) -> None:
        """Identity norms, uniform projections, small positions, zero output projection."""
        self.clear_slot(index)
        with torch.no_grad():
            for norm in (self.norm_weight, self.attn_norm_weight, self.mlp_norm_weight):
                norm[index].fill_(1.0)
            for param in (self.in_proj, self.qkv, self.attn_proj, self.fc1, self.fc2):
                self.uniform_slot(param, index, 1.0 / math.sqrt(param.shape[1]), generator)
            self.uniform_slot(self.pos, index, 0.02, generator)

    def forward(self, x: Tensor, index: SlotIndex, layout: TokenLayout) -> Tensor:
        n, S, _ = x.shape
        if self.segments < S:
            raise ConfigError(
                f"a clip of {S} segments is longer than the {self.segments} this adapter's "
                "temporal model takes; classify longer videos window by window"
            )
        u = rows_linear(
            row_layer_norm(x, self.norm_weight, self.norm_bias, index),
            self.in_proj,
            self.in_bias,
            index,
        )
        u = u + index.take(self.pos)[..., :S, :]
        a = row_layer_norm(u, self.attn_norm_weight, self.attn_norm_bias, index)
        qkv = rows_linear(a, self.qkv, self.qkv_bias, index)
        width = u.shape[-1]
        q, k, v = qkv.view(n, S, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, S, width)
        u = u + rows_linear(attended, self.attn_proj, self.attn_proj_bias, index)
        m = row_layer_norm(u, self.mlp_norm_weight, self.mlp_norm_bias, index)
        hidden = F.gelu(rows_linear(m, self.fc1, self.fc1_bias, index))
        u = u + rows_linear(hidden, self.fc2, self.fc2_bias, index)
        return rows_linear(u, self.out_proj, self.out_bias, index)


def _check_backbone(backbone: BackboneConfig) -> None:
    if not backbone.has_rgb_kernel:
        raise ConfigError(
            f"AV-PEA needs a backbone with an RGB patch kernel for its visual stream; "
            f"{backbone.name!r} has {backbone.in_chans} input channel(s) (a spectrogram-only "
            "checkpoint such as AST). Use an ImageNet ViT, e.g. "
            "'timm:vit_base_patch16_224.augreg_in21k'"
        )


def _make_sites(config: AdapterConfig, site: SiteContext) -> dict[SitePosition, StackedSite]:
    assert isinstance(config, AvpeaConfig)
    _check_backbone(site.backbone)
    return {"attn.cross": AvpeaSite(site.width, config.width(site.width), site.num_slots)}


def _make_clip_site(config: AdapterConfig, site: SiteContext) -> StackedSite:
    assert isinstance(config, AvpeaConfig)
    width = config.width(site.width)
    if width % config.temporal_heads:
        raise ConfigError(
            f"temporal_heads {config.temporal_heads} does not divide the temporal width {width} "
            f"(embed_dim {site.width} / reduction {config.reduction})"
        )
    return TemporalSite(site.width, width, config.segments, config.temporal_heads, site.num_slots)


AVPEA = AdapterMethod(
    name="avpea",
    config_cls=AvpeaConfig,
    make_sites=_make_sites,
    summary="audio-visual adapter: CLS cross-attention between streams + bottleneck (AV-PEA)",
    tasks=("av_events",),
    make_clip_site=_make_clip_site,
)
