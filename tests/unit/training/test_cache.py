"""Feature cache: decoded once, keyed by content + feature config, identical to extract()."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import training.cache as cache_mod
from lookaside.decode import decode_audio
from lookaside.features import FeatureConfig, extract, normalise
from training.cache import FeatureCache
from training.datasets.base import Clip


def _wav(path: Path, seed: int, seconds: float = 0.8) -> Path:
    rng = np.random.default_rng(seed)
    sf.write(path, (0.3 * rng.standard_normal(int(16_000 * seconds))).astype(np.float32), 16_000)
    return path


def test_second_read_never_decodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = Clip(_wav(tmp_path / "a.wav", 0), 0)
    cfg = FeatureConfig(target_frames=64)
    first = FeatureCache(tmp_path / "cache", cfg).fbank(clip)

    def boom(*_: object) -> None:
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(cache_mod, "read_clip", boom)
    cache = FeatureCache(tmp_path / "cache", cfg)  # a new process would start like this
    assert torch.equal(cache.fbank(clip), first)
    assert cache.hits == 1


def test_same_as_extract(tmp_path: Path) -> None:
    path = _wav(tmp_path / "a.wav", 1)
    cfg = FeatureConfig(target_frames=64, mean=-3.0, std=4.0)
    cached = normalise(FeatureCache(tmp_path / "c", cfg).fbank(Clip(path, 0)), cfg.mean, cfg.std)
    wave, rate = decode_audio(path.read_bytes())
    torch.testing.assert_close(cached, extract(wave, rate, cfg), rtol=0, atol=1e-6)


def test_key_follows_content_and_config_not_the_path(tmp_path: Path) -> None:
    path = _wav(tmp_path / "a.wav", 2)
    cache = FeatureCache(tmp_path / "c", FeatureConfig(target_frames=64))
    key = cache.key(Clip(path, 0), "fbank")
    copy = tmp_path / "copy.wav"
    copy.write_bytes(path.read_bytes())
    assert cache.key(Clip(copy, 0), "fbank") == key  # same bytes, same entry
    assert cache.key(Clip(path, 0, 0.0, 0.5), "fbank") != key  # a segment is another clip
    other = FeatureCache(tmp_path / "c", FeatureConfig(target_frames=32))
    assert other.key(Clip(path, 0), "fbank") != key
    _wav(path, 3)  # rewritten in place with other audio
    assert (
        FeatureCache(tmp_path / "c", FeatureConfig(target_frames=64)).key(Clip(path, 0), "fbank")
        != key
    )


def test_compute_stats_matches_the_features(tmp_path: Path) -> None:
    from training.data import ClipDataset
    from training.tasks.clip import compute_stats

    clips = [Clip(_wav(tmp_path / f"{i}.wav", 10 + i), 0) for i in range(3)]
    cfg = FeatureConfig(target_frames=48)
    ds = ClipDataset(clips, cfg, FeatureCache(None, cfg))
    mean, std = compute_stats(ds, progress=False)
    everything = torch.cat([ds.raw(i) for i in range(3)]).double()
    assert mean == pytest.approx(float(everything.mean()), rel=1e-9)
    assert std == pytest.approx(float(everything.std(unbiased=False)), rel=1e-6)
