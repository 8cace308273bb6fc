"""The frozen Vision Transformer shared by every adapter, with explicit adapter sites.

The model is the ViT of Dosovitskiy et al. (2021) in the shape of timm's
``models/vision_transformer.py`` (same state-dict keys, so timm and AST weights load after a pure
key conversion, see :mod:`lookaside.backbone_convert`), applied to a 1-channel log-mel spectrogram
as in AST (Gong et al., 2021): patches cut from the (frequency x time) image give a token grid
``(F, T)`` that every adapter site is told about.

Two streams (AV-PEA, docs/design.md §2): a backbone that kept its RGB patch kernel (``in_chans=3``)
also embeds video frames (:meth:`VisionTransformer.embed_frames`); the spectrogram stream uses the
1-channel kernel derived from it (the RGB kernels summed, so a grey image gives the response of
the original net). :meth:`VisionTransformer.forward_features_av` runs both streams block by block
in lockstep through the same blocks (one set of weights), and in each block the ``attn.cross``
site of each stream receives the other stream's block input, passed explicitly.

Adapter sites are written out in :meth:`lookaside.backbone_blocks.Block.forward`, not installed
as hooks. Each site asks the
batch's :class:`~lookaside.sites.Route` for a contribution; the route knows which adapter
every row uses, so one pass serves a batch whose rows use different adapters. With ``route=None``
the forward is the plain ViT. Token layout: ``[prefix (CLS[, DIST]) | prompts | grid F*T]``, the
grid in row-major order (time varies fastest), matching timm's ``flatten(2)`` of the patch conv;
prompt tokens exist only from the route's first prompt block (``route.prompt_start``) on.

The backbone is frozen by construction: parameters never require grad and ``train()`` is a no-op,
so dropout-free eval behaviour holds wherever the module is placed.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lookaside.backbone_blocks import Block, PatchEmbed
from lookaside.backbone_config import BackboneConfig
from lookaside.errors import ConfigError
from lookaside.sites import Route, TokenLayout

POS_CACHE_GRIDS = 32
"""Position embeddings (one per token grid, device and dtype) a backbone keeps resampled."""


def resample_pos_embed(
    posemb: Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int],
    num_prefix_tokens: int,
    mode: str = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """Resample a ``[1, prefix + H*W, D]`` position embedding to another patch grid.

    Equal to timm's ``timm.layers.resample_abs_pos_embed`` with its defaults (bicubic,
    ``antialias=True``, ``align_corners=False``, computed in float32): timm applies it in
    ``checkpoint_filter_fn`` and for ``dynamic_img_size``, so a timm ViT run on the spectrogram grid
    sees the same positions as ours. Antialiasing matters here: every ImageNet ViT on a 128-mel
    spectrogram shrinks its 14 rows to 8, and plain bicubic then differs from timm by up to ~1.

    Prefix-token embeddings are kept as they are; the grid part is interpolated in 2-D (the
    reference code of the papers skipped a mismatched embedding entirely, leaving the model with no
    positional information: docs/design.md §5). ``new_grid`` may hold symbolic sizes
    (``torch.export`` with a dynamic frame axis): the same-grid shortcut is then skipped, which
    changes nothing because antialiased bicubic at scale 1 is the identity.
    """
    if posemb.shape[1] != num_prefix_tokens + old_grid[0] * old_grid[1]:
        raise ConfigError(
            f"position embedding has {posemb.shape[1]} tokens, expected "
            f"{num_prefix_tokens} + {old_grid[0]}x{old_grid[1]}"
        )
    static = all(isinstance(n, int) for n in new_grid)
    if static and tuple(new_grid) == tuple(old_grid):
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    image = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    image = F.interpolate(
        image,
        size=(new_grid[0], new_grid[1]),
        mode=mode,
        align_corners=False if mode in ("bilinear", "bicubic") else None,
        antialias=antialias and mode in ("bilinear", "bicubic"),
    )
    grid = image.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(posemb.dtype)
    return torch.cat([prefix, grid], dim=1)


class VisionTransformer(nn.Module):
    """Frozen ViT over spectrograms; see the module docstring for layout and sites."""

    def __init__(self, cfg: BackboneConfig, source: str = "random") -> None:
        super().__init__()
        self.cfg = cfg
        self.source = source
        """Where the weights came from (``timm:<name>``, ``hf:<repo>``, a file, or random)."""
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.distilled else None
        fg, tg = cfg.source_grid
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_prefix_tokens + fg * tg, D))
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self._init_random(seed=0)
        self._pos_cache: OrderedDict[tuple[int, int, torch.device, torch.dtype], Tensor] = (
            OrderedDict()
        )
        self._mono: tuple[tuple[int, int, torch.device, torch.dtype], Tensor] | None = None
        self._fingerprint: str | None = None
        self.requires_grad_(False)
        super().train(False)

    # -- frozen by construction -------------------------------------------------------------
    def train(self, mode: bool = True) -> VisionTransformer:
        """The backbone stays in eval mode whatever its parent module does."""
        return super().train(False)

    def _init_random(self, seed: int) -> None:
        """Deterministic random weights (tests, demos); real use loads pretrained weights."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith(".bias"):
                    p.zero_()
                elif "norm" in name:
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)

    def load_weights(self, state_dict: dict[str, Tensor]) -> None:
        """Load a state dict in our (timm) key layout, strictly; invalidates derived caches."""
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise ConfigError(
                f"backbone weights do not match the config: missing {sorted(missing)}, "
                f"unexpected {sorted(unexpected)}"
            )
        self._pos_cache.clear()
        self._mono = None
        self._fingerprint = None

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> VisionTransformer:
        # .to()/.cuda()/.half() create new tensors: derived caches must follow.
        self._pos_cache = OrderedDict()
        self._mono = None
        return super()._apply(fn, recurse)  # type: ignore[no-untyped-call]

    # -- identity ---------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Hash of architecture + weights; adapter checkpoints record it to refuse a mismatch.

        The display name (``cfg.name``) and the source string are left out: the same weights
        loaded under another name, or from a file instead of the hub, are the same backbone, and
        adapters trained on one must load on the other. ``image_size`` counts only for a backbone
        with an RGB kernel (a spectrogram-only backbone never sees frames).
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            excluded = {"name"} if self.cfg.has_rgb_kernel else {"name", "image_size"}
            architecture = self.cfg.model_dump(exclude=excluded)
            digest.update(json.dumps(architecture, sort_keys=True).encode())
            for name, tensor in sorted(self.state_dict().items()):
                digest.update(name.encode())
                t = tensor.detach().to("cpu", torch.float32).contiguous()
                digest.update(str(tuple(t.shape)).encode())
                digest.update(t.numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    @property
    def num_params(self) -> int:
        """Parameter count (the denominator of an adapter's parameter percentage)."""
        return sum(p.numel() for p in self.parameters())

    # -- forward ----------------------------------------------------------------------------
    def pos_embed_for(
        self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """Position embedding resampled to ``grid``, cached per grid (the weights are frozen).

        The cache keeps the :data:`POS_CACHE_GRIDS` most recently used grids: each adapter may
        bring its own grid, so an unbounded cache would grow with the uploads.

        Under ``torch.compile`` / ``torch.export`` the resample is computed in the graph instead:
        a Python dict keyed by (symbolic) sizes cannot be traced, and a dynamic frame axis needs
        the resample to follow the traced grid.
        """
        if torch.compiler.is_compiling():
            return resample_pos_embed(
                self.pos_embed, grid, self.cfg.source_grid, self.cfg.num_prefix_tokens
            ).to(device=device, dtype=dtype)
        key = (grid[0], grid[1], device, dtype)
        cached = self._pos_cache.get(key)
        if cached is None:
            with torch.no_grad():
                cached = resample_pos_embed(
                    self.pos_embed, grid, self.cfg.source_grid, self.cfg.num_prefix_tokens
                ).to(device=device, dtype=dtype)
            self._pos_cache[key] = cached
            if len(self._pos_cache) > POS_CACHE_GRIDS:  # every uploaded grid would stay forever
                self._pos_cache.popitem(last=False)
        else:
            self._pos_cache.move_to_end(key)
        return cached

    def embed(self, spec: Tensor, num_prompts: int = 0) -> tuple[Tensor, TokenLayout]:
        """Patch-embed a ``[B, frames, mel]`` spectrogram and add prefix tokens and positions.

        ``num_prompts`` > 0 also opens zero prompt slots (see :meth:`insert_prompt_slots`); the
        forward opens them later, just before the first block that writes prompts.
        """
        if spec.dim() != 3 or spec.shape[2] < self.cfg.patch_size:
            raise ConfigError(
                f"expected a [batch, frames, mel] spectrogram, got {tuple(spec.shape)}"
            )
        tokens, grid = self.patch_embed(spec, self.mono_kernel())
        x = self._with_prefix_and_positions(tokens, grid)
        layout = TokenLayout(num_prefix=self.cfg.num_prefix_tokens, num_prompts=0, grid=grid)
        if num_prompts:
            return self.insert_prompt_slots(x, layout, num_prompts)
        return x, layout

    def _with_prefix_and_positions(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        B = tokens.shape[0]
        prefix = [self.cls_token.expand(B, -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(B, -1, -1))
        x = torch.cat([*prefix, tokens], dim=1)
        return x + self.pos_embed_for(grid, x.device, x.dtype)

    def mono_kernel(self) -> Tensor | None:
        """The 1-channel patch kernel derived from an RGB one (summed over channels), cached per
        weight version; None when the stored kernel already has one channel."""
        weight = self.patch_embed.proj.weight
        if weight.shape[1] == 1:
            return None
        if torch.compiler.is_compiling():
            return weight.sum(dim=1, keepdim=True)
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype)
        if self._mono is None or self._mono[0] != key:
            with torch.no_grad():
                self._mono = (key, weight.sum(dim=1, keepdim=True))
        return self._mono[1]

    def check_visual(self) -> None:
        """Refuse the visual stream on a backbone without an RGB patch kernel."""
        if not self.cfg.has_rgb_kernel:
            raise ConfigError(
                f"backbone {self.cfg.name!r} (source {self.source}) has a {self.cfg.in_chans}-"
                "channel patch kernel and no RGB one (a spectrogram-only checkpoint such as AST), "
                "so it cannot embed video frames; audio-visual adapters need an ImageNet ViT that "
                "kept its RGB kernel, e.g. 'timm:vit_base_patch16_224.augreg_in21k'"
            )

    def embed_frames(self, pixels: Tensor) -> tuple[Tensor, TokenLayout]:
        """Patch-embed ``[B, 3, H, W]`` frames (ImageNet-normalised, see
        :func:`lookaside.features.frames_to_pixels`) with the RGB kernel, add prefix tokens and
        the position embedding resampled to the frame's grid."""
        self.check_visual()
        if pixels.dim() != 4 or pixels.shape[1] != self.cfg.in_chans:
            raise ConfigError(
                f"expected [batch, {self.cfg.in_chans}, height, width] frames, got "
                f"{tuple(pixels.shape)}"
            )
        if min(pixels.shape[2], pixels.shape[3]) < self.cfg.patch_size:
            raise ConfigError(
                f"frames of {pixels.shape[2]}x{pixels.shape[3]} are smaller than one "
                f"{self.cfg.patch_size}-pixel patch; resize them to {self.cfg.image_size}"
            )
        tokens, grid = self.patch_embed.forward_image(pixels)
        x = self._with_prefix_and_positions(tokens, grid)
        layout = TokenLayout(
            num_prefix=self.cfg.num_prefix_tokens, num_prompts=0, grid=grid, modality="visual"
        )
        return x, layout

    @staticmethod
    def insert_prompt_slots(
        x: Tensor, layout: TokenLayout, num_prompts: int
    ) -> tuple[Tensor, TokenLayout]:
        """Open ``num_prompts`` zero tokens after the prefix of a prompt-free sequence.

        The zeros are placeholders: the first prompt block overwrites them
        (:meth:`lookaside.sites.Route.write_prompts`) before they take part in attention.
        """
        if layout.num_prompts:
            raise ConfigError("the sequence already has prompt tokens")
        n = layout.num_prefix
        blank = x.new_zeros(x.shape[0], num_prompts, x.shape[2])
        x = torch.cat([x[:, :n], blank, x[:, n:]], dim=1)
        return x, TokenLayout(num_prefix=n, num_prompts=num_prompts, grid=layout.grid)

    def forward_features(
        self, spec: Tensor, route: Route | None = None
    ) -> tuple[Tensor, TokenLayout]:
        """Tokens after the final norm, ``[B, L, D]``, and their layout.

        Prompt tokens (deep prompt tuning) are inserted just before block ``route.prompt_start``,
        the first block that writes them: the blocks before it see the plain token layout and
        compute exactly what the plain ViT computes (zero placeholders in their attention would
        change every token). The returned layout is the final one.

        Args:
            spec: normalised fbank, ``[batch, frames, mel]``.
            route: per-row adapter routing for this batch; ``None`` runs the bare backbone.
        """
        if route is not None and route.batch_size != spec.shape[0]:
            raise ConfigError(
                f"route is for {route.batch_size} rows but the batch has {spec.shape[0]}"
            )
        num_prompts = route.num_prompts if route is not None else 0
        prompt_start = route.prompt_start if route is not None and num_prompts else 0
        if not 0 <= prompt_start < self.cfg.depth:
            raise ConfigError(
                f"route.prompt_start {prompt_start} is not a block of this "
                f"{self.cfg.depth}-block backbone (valid: 0..{self.cfg.depth - 1})"
            )
        x, layout = self.embed(spec)
        for i, block in enumerate(self.blocks):
            if num_prompts and i == prompt_start:
                x, layout = self.insert_prompt_slots(x, layout, num_prompts)
            x = block(x, route, layout)
        return self.norm(x), layout

    def forward_features_av(
        self, spec: Tensor, pixels: Tensor, route: Route | None = None
    ) -> tuple[tuple[Tensor, TokenLayout], tuple[Tensor, TokenLayout]]:
        """Both streams after the final norm: ``((audio, layout), (visual, layout))``.

        Row ``i`` of ``spec`` and row ``i`` of ``pixels`` are the same moment of one clip. The two
        streams go through each block in turn, block by block, so that block ``l`` of either
        stream sees the other stream's input to block ``l`` at its ``attn.cross`` sites; both use
        this backbone's one set of weights. Each stream's other sites apply as in
        :meth:`forward_features`. Prompt tuning is single-stream and refused here.

        Args:
            spec: normalised fbank, ``[batch, frames, mel]``.
            pixels: normalised RGB frames, ``[batch, 3, height, width]``.
            route: per-row adapter routing; ``None`` runs the bare backbone on both streams.
        """
        if spec.shape[0] != pixels.shape[0]:
            raise ConfigError(
                f"{spec.shape[0]} spectrogram rows but {pixels.shape[0]} frame rows: each row is "
                "one moment of a clip in both streams"
            )
        if route is not None and route.batch_size != spec.shape[0]:
            raise ConfigError(
                f"route is for {route.batch_size} rows but the batch has {spec.shape[0]}"
            )
        if route is not None and route.num_prompts:
            raise ConfigError(
                "prompt tuning is single-stream: route prompt adapters through forward_features"
            )
        xv, lv = self.embed_frames(pixels)
        xa, la = self.embed(spec)
        for block in self.blocks:
            # both right-hand sides read the inputs of this block: the streams advance together
            xa, xv = block(xa, route, la, xv, lv), block(xv, route, lv, xa, la)
        return (self.norm(xa), la), (self.norm(xv), lv)

    def forward(self, spec: Tensor, route: Route | None = None) -> Tensor:
        """AST-style pooled embedding (mean of the prefix tokens), ``[B, D]``."""
        x, layout = self.forward_features(spec, route)
        return x[:, : layout.num_prefix].mean(dim=1)

    def named_blocks(self) -> Iterator[tuple[int, Block]]:
        """Blocks with their index (adapters are built per block)."""
        for i, block in enumerate(self.blocks):
            assert isinstance(block, Block)
            yield i, block
