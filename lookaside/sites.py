"""The vocabulary the backbone and the adapters share, so neither imports the other.

The backbone calls a :class:`Route` at named :data:`SitePosition`\\ s of every block and tells it
where the tokens sit (:class:`TokenLayout`); adapter methods implement sites at those positions;
:class:`lookaside.bank.route.RowRoute` is the route the adapter bank builds per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from torch import Tensor

SitePosition = Literal[
    "tokens", "attn.qkv", "attn.parallel", "attn.post", "ffn.parallel", "attn.cross", "clip"
]
"""Where an adapter can act inside a block (or, for ``clip``, after the last one).

- ``tokens``: rewrites the prompt tokens before the block (deep prompt tuning).
- ``attn.qkv``: adds to the qkv projection of the normed input (LoRA on q and v).
- ``attn.parallel`` / ``ffn.parallel``: adds ``f(h)`` to the sub-layer output, ``h`` the sub-layer
  input (after its LayerNorm): Houlsby/Pfeiffer parallel adapters, LoAA, MoA, Convpass, AAT MLP.
- ``attn.post``: adds ``f(y)`` to the attention output ``y`` (an adapter after the sub-layer with
  its own shortcut: AAT's spatial adapter).
- ``attn.cross``: two-stream forward only (:meth:`Route.add_cross`): adds ``f(x, other)`` to the
  attention output of one stream, ``x`` this stream's block input and ``other`` the other
  stream's block input (AV-PEA's CLS cross-attention and bottleneck).
- ``clip``: after the backbone, across the segments of one clip (layer :data:`CLIP_LAYER`): adds
  ``f(z)`` to the per-segment features ``z`` ``[clips, segments, D]`` (AV-PEA's temporal model).
"""

SITE_POSITIONS: tuple[SitePosition, ...] = (
    "tokens",
    "attn.qkv",
    "attn.parallel",
    "attn.post",
    "ffn.parallel",
    "attn.cross",
    "clip",
)

AUDIO_VISUAL_POSITIONS: tuple[SitePosition, ...] = ("attn.cross", "clip")
"""Positions only the audio-visual forward calls (``MultiAdapterModel.forward_av``)."""

CLIP_LAYER = -1
"""Layer index of ``clip`` sites: they run once per clip after the last block, not in a block."""

Modality = Literal["audio", "visual"]
"""Which input a token sequence came from: the spectrogram or the video frames."""


@dataclass(frozen=True, slots=True)
class TokenLayout:
    """Where the tokens of one forward pass sit; handed to every adapter site.

    A plain frozen dataclass (not pydantic): one is built per forward, inside traced and compiled
    graphs.
    """

    num_prefix: int
    """Special tokens first in the sequence (CLS[, DIST])."""
    num_prompts: int
    """Prompt tokens after the prefix (0 unless the batch uses prompt tuning)."""
    grid: tuple[int, int]
    """(F, T): frequency rows and time columns of the patch tokens that follow (for a visual
    stream: image rows and columns)."""
    modality: Modality = "audio"
    """The stream these tokens belong to; a two-stream site picks its per-stream weights by it."""

    @property
    def num_special(self) -> int:
        """Tokens with no grid position (prefix and prompts)."""
        return self.num_prefix + self.num_prompts

    @property
    def num_tokens(self) -> int:
        """Sequence length."""
        return self.num_special + self.grid[0] * self.grid[1]


class Route(Protocol):
    """What a block asks of the per-batch routing object (see ``RowRoute``)."""

    batch_size: int
    """Rows the route was built for."""
    num_prompts: int
    """Prompt tokens every row of this batch carries."""
    prompt_start: int
    """First block that writes prompts; the backbone inserts the prompt tokens just before it, so
    earlier blocks run exactly as the plain ViT (meaningless when ``num_prompts`` is 0)."""

    def add_to(
        self, layer: int, position: SitePosition, x: Tensor, out: Tensor, layout: TokenLayout
    ) -> Tensor:
        """``out`` plus each row's own adapter contribution at (layer, position) from ``x``."""
        ...

    def write_prompts(self, layer: int, x: Tensor, layout: TokenLayout) -> Tensor:
        """``x`` with each row's own prompt tokens for block ``layer`` written in."""
        ...

    def add_cross(
        self,
        layer: int,
        x: Tensor,
        other: Tensor,
        out: Tensor,
        layout: TokenLayout,
        other_layout: TokenLayout,
    ) -> Tensor:
        """``out`` plus each row's own ``attn.cross`` contribution at block ``layer``.

        ``x`` is this stream's block input (``layout.modality`` says which stream), ``other`` the
        other stream's block input for the same rows; ``out`` is this stream's attention output.
        """
        ...
