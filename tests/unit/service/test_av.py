"""Window grouping of long videos and the reassembly of their per-second probabilities."""

from __future__ import annotations

import torch

from service.av import AvClip, assemble, window_groups


def _clip(seconds: int) -> AvClip:
    spec = torch.arange(seconds, dtype=torch.float32)[:, None, None].expand(seconds, 4, 2)
    pixels = torch.arange(seconds, dtype=torch.float32)[:, None, None, None].expand(
        seconds, 3, 2, 2
    )
    return AvClip(duration_s=float(seconds), spec=spec, pixels=pixels, featurize_s=0.0)


def test_windows_of_one_length_form_one_group_in_clip_order() -> None:
    groups = window_groups(_clip(23), segments=10)
    assert [g.windows for g in groups] == [[(0, 10), (10, 20)], [(20, 23)]]
    assert groups[0].spec.shape == (2, 10, 4, 2)
    assert groups[1].pixels.shape == (1, 3, 3, 2, 2)
    # Each window holds its own seconds (the value of every tensor is its second index).
    assert groups[0].spec[1, :, 0, 0].tolist() == list(range(10, 20))
    assert groups[1].pixels[0, :, 0, 0, 0].tolist() == [20, 21, 22]


def test_a_clip_no_longer_than_the_window_is_one_window() -> None:
    (group,) = window_groups(_clip(7), segments=10)
    assert group.windows == [(0, 7)]


def test_assemble_puts_each_second_back_in_place() -> None:
    groups = window_groups(_clip(23), segments=10)
    # Logits that make class (t % 3) certain at second t.
    logits = []
    for g in groups:
        out = torch.full((len(g.windows), g.spec.shape[1], 3), -30.0)
        for w, (start, stop) in enumerate(g.windows):
            for t in range(start, stop):
                out[w, t - start, t % 3] = 30.0
        logits.append(out)
    probs = assemble(groups, logits, 23)
    assert probs.shape == (23, 3)
    assert probs.argmax(1).tolist() == [t % 3 for t in range(23)]
    torch.testing.assert_close(probs.sum(1), torch.ones(23))
