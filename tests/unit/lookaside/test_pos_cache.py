"""The backbone's resampled position embeddings are cached per grid, and the cache is bounded:
every uploaded adapter may bring its own grid, and an unbounded cache would grow with them."""

from __future__ import annotations

import torch

from lookaside.backbone import POS_CACHE_GRIDS, resample_pos_embed
from lookaside.backbones import build_random


def test_pos_cache_keeps_the_most_recent_grids_only() -> None:
    backbone = build_random("test_vit", seed=1)
    cpu, f32 = torch.device("cpu"), torch.float32
    first = backbone.pos_embed_for((8, 1), cpu, f32)
    for t in range(2, POS_CACHE_GRIDS + 10):
        backbone.pos_embed_for((8, t), cpu, f32)
        backbone.pos_embed_for((8, 2), cpu, f32)  # used again and again: never evicted
    assert len(backbone._pos_cache) == POS_CACHE_GRIDS
    assert (8, 1, cpu, f32) not in backbone._pos_cache  # the least recently used went first
    assert (8, 2, cpu, f32) in backbone._pos_cache
    again = backbone.pos_embed_for((8, 1), cpu, f32)  # recomputed, identical
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    expected = resample_pos_embed(
        backbone.pos_embed, (8, 1), backbone.cfg.source_grid, backbone.cfg.num_prefix_tokens
    )
    torch.testing.assert_close(again, expected, rtol=0, atol=0)
