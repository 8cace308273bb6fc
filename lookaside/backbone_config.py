"""The shape of a ViT backbone, and the token arithmetic every budget counts with.

Kept apart from the model (:mod:`lookaside.backbone`) so adapter methods, checkpoints and the
service's limits can reason about a backbone without importing its modules.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lookaside.errors import ConfigError

__all__ = ["BackboneConfig", "grid_tokens", "window_tokens"]


class BackboneConfig(BaseModel):
    """Shape of a ViT backbone. Hashable, JSON-serialisable, part of the backbone fingerprint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "vit_base_patch16"
    """Human-readable architecture name (recorded in adapter checkpoints)."""
    embed_dim: int = Field(768, gt=0)
    """Token width D."""
    depth: int = Field(12, gt=0)
    """Number of transformer blocks."""
    num_heads: int = Field(12, gt=0)
    """Attention heads per block; must divide embed_dim."""
    mlp_ratio: float = Field(4.0, gt=0)
    """FFN hidden width as a multiple of embed_dim."""
    patch_size: int = Field(16, gt=0)
    """Square patch side in spectrogram bins/frames."""
    patch_stride: tuple[int, int] = (16, 16)
    """(frequency, time) stride of the patch conv; (10, 10) is AST's overlapping layout."""
    in_chans: int = Field(1, gt=0)
    """Input channels of the stored patch conv: 3 keeps an ImageNet ViT's RGB kernel (the
    spectrogram uses the kernels summed over RGB; frames use it as is), 1 is a spectrogram-only
    kernel (AST checkpoints), which cannot embed video frames."""
    num_mel_bins: int = Field(128, gt=0)
    """Spectrogram height the position embedding was built for."""
    num_frames: int = Field(1024, gt=0)
    """Spectrogram width (frames) the stored position embedding was built for."""
    distilled: bool = False
    """DeiT/AST-style second prefix token (distillation token)."""
    qkv_bias: bool = True
    """Bias on the qkv projection."""
    norm_eps: float = Field(1e-6, gt=0)
    """LayerNorm epsilon (timm 1e-6, AST 1e-12)."""
    image_size: tuple[int, int] = (224, 224)
    """(height, width) the visual stream resizes frames to: the image size the weights were
    pre-trained at. Used only with an RGB kernel (``in_chans=3``)."""

    @model_validator(mode="after")
    def _check(self) -> BackboneConfig:
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if min(self.patch_stride) <= 0:
            raise ConfigError(f"patch_stride must be positive, got {self.patch_stride}")
        if self.num_mel_bins < self.patch_size or self.num_frames < self.patch_size:
            raise ConfigError("the spectrogram must be at least one patch in each direction")
        if min(self.image_size) < self.patch_size:
            raise ConfigError(
                f"image_size {self.image_size} is smaller than one {self.patch_size}-pixel patch"
            )
        return self

    @property
    def has_rgb_kernel(self) -> bool:
        """True when the backbone can embed RGB video frames (the visual stream of AV-PEA)."""
        return self.in_chans == 3

    @property
    def image_grid(self) -> tuple[int, int]:
        """Token grid (rows, columns) of a frame at :attr:`image_size`."""
        return self.grid_for(*self.image_size)

    @property
    def num_prefix_tokens(self) -> int:
        """CLS, plus DIST when distilled."""
        return 2 if self.distilled else 1

    @property
    def mlp_hidden(self) -> int:
        """Hidden width of each block's FFN."""
        return int(self.embed_dim * self.mlp_ratio)

    def grid_for(self, num_mel_bins: int, num_frames: int) -> tuple[int, int]:
        """Token grid (F, T) produced by a spectrogram of the given size."""
        if num_mel_bins < self.patch_size or num_frames < self.patch_size:
            raise ConfigError(
                f"spectrogram {num_mel_bins}x{num_frames} is smaller than one "
                f"{self.patch_size}x{self.patch_size} patch"
            )
        sf, st = self.patch_stride
        return (num_mel_bins - self.patch_size) // sf + 1, (num_frames - self.patch_size) // st + 1

    @property
    def source_grid(self) -> tuple[int, int]:
        """The grid the stored position embedding covers."""
        return self.grid_for(self.num_mel_bins, self.num_frames)

    @property
    def grid_is_tiled(self) -> bool:
        """True when patches do not overlap, so tokens sit on a true time-frequency grid."""
        return self.patch_stride == (self.patch_size, self.patch_size)


def grid_tokens(num_frames: int, cfg: BackboneConfig, num_mel_bins: int = 128) -> int:
    """Number of patch tokens for a clip of ``num_frames`` frames (e.g. 512 -> 256 for ViT-B/16)."""
    f, t = cfg.grid_for(num_mel_bins, num_frames)
    return f * t


def window_tokens(
    cfg: BackboneConfig,
    num_mel_bins: int,
    num_frames: int,
    *,
    segments: int = 0,
    image_size: tuple[int, int] | None = None,
) -> int:
    """Patch tokens of one window: what one row costs a forward (the per-forward budget and the
    upload limit both count with this).

    A spectrogram window is ``F x T`` tokens (AST's stride-10 128 x 1024: 12 x 101 = 1212). An
    audio-visual window (``segments`` > 0) is that many one-second segments, each one spectrogram
    and one frame of ``image_size`` (default: the backbone's), both run through the backbone.

    Raises:
        ConfigError: the spectrogram or frame is smaller than one patch.
    """
    audio = math.prod(cfg.grid_for(num_mel_bins, num_frames))
    if segments <= 0:
        return audio
    height, width = image_size or cfg.image_size
    return segments * (audio + math.prod(cfg.grid_for(height, width)))
