"""Training-only augmentation: SpecAugment masks and mixup pairs (moved with the code from
lookaside.features)."""

from __future__ import annotations

import pytest
import torch

from lookaside.errors import ConfigError
from training.augment import SpecAugment, mixup


# -- SpecAugment and mixup --------------------------------------------------------------------
def test_specaugment_masks_whole_rows_and_columns_in_train_only() -> None:
    spec = torch.randn(8, 200, 128) + 5  # no zeros before masking
    aug = SpecAugment(freq_mask=30, time_mask=50, num_freq_masks=2, num_time_masks=2)
    masked = aug.train()(spec)
    assert masked.shape == spec.shape
    hit = masked == 0
    assert bool(hit.any())
    # Every masked cell lies in a fully masked frame (time) or mel bin (frequency).
    full_frames = hit.all(dim=2, keepdim=True)
    full_bins = hit.all(dim=1, keepdim=True)
    assert bool((hit <= (full_frames | full_bins)).all())
    assert bool((masked[~hit] == spec[~hit]).all())
    assert not all(torch.equal(hit[0], hit[i]) for i in range(1, 8))  # masks drawn per example
    assert aug(spec[0]).shape == spec[0].shape
    assert aug.eval()(spec) is spec


def test_specaugment_caps_widths_at_the_input_length() -> None:
    aug = SpecAugment(freq_mask=0, time_mask=1000).train()
    spec = torch.ones(64, 10, 16)  # ten frames, mask up to 1000 wide
    for _ in range(5):
        assert bool((aug(spec) != 0).any(dim=2).any(dim=1).all())  # never the whole clip


def test_specaugment_keeps_dtype_and_value() -> None:
    aug = SpecAugment(freq_mask=20, time_mask=20, mask_value=-1.5).train()
    out = aug(torch.full((4, 400, 128), 3.0, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert set(out.unique().tolist()) <= {3.0, -1.5}
    with pytest.raises(ConfigError):
        SpecAugment(freq_mask=-1)


def test_mixup_is_a_convex_combination_with_matching_labels() -> None:
    x = torch.randn(6, 10, 8)
    y = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    xm, ym, lam = mixup(x, y, alpha=0.4, generator=torch.Generator().manual_seed(3))
    assert 0.0 < lam < 1.0  # strictly inside, so the pairing below is identifiable
    torch.testing.assert_close(ym.sum(-1), torch.ones(6))
    partners = []
    for i in range(6):
        js = [
            j for j in range(6) if torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5)
        ]
        assert len(js) == 1
        partners.append(js[0])
        torch.testing.assert_close(ym[i], lam * y[i] + (1 - lam) * y[js[0]])
    assert sorted(partners) == list(range(6))  # a permutation of the batch


def test_mixup_is_reproducible_and_alpha_zero_is_identity() -> None:
    x, y = torch.randn(4, 3), torch.eye(4)
    first = mixup(x, y, 1.0, generator=torch.Generator().manual_seed(7))
    again = mixup(x, y, 1.0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first[0], again[0])
    assert first[2] == again[2]
    lams = {mixup(x, y, 1.0)[2] for _ in range(5)}
    assert len(lams) == 5
    assert all(0 <= v <= 1 for v in lams)
    same = mixup(x, y, alpha=0.0)
    assert same[0] is x
    assert same[1] is y
    assert same[2] == 1.0
    with pytest.raises(ValueError, match="batch"):
        mixup(x, y[:3], 1.0)
