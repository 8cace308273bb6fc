"""The finite-value scan of adapter tensors (checkpoint validation and ``AdapterBank.load``).

The fast path sums each tensor; the exact per-element check runs only where a sum is not finite.
Tested against the plain per-tensor ``torch.isfinite(t).all()``, including sums that overflow
while every value is finite. ``AdapterBank.load`` skips only the scan, and only for a
ValidatedCheckpoint.
"""

from __future__ import annotations

import pytest
import torch

from lookaside.adapters import HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.checkpoint import AdapterCheckpoint, ValidatedCheckpoint
from lookaside.checkpoint.finite import nonfinite_names
from lookaside.errors import InvalidCheckpoint
from lookaside.features import FeatureConfig
from tests.support import randomise

LOAA = {"rank": 3, "kernels": "attn:T,ffn:F"}
HEAD = HeadConfig(num_classes=3)
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _reference(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted(n for n, t in tensors.items() if not bool(torch.isfinite(t).all()))


def test_nonfinite_names_matches_the_per_element_check() -> None:
    gen = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    for dtype in DTYPES:
        big = torch.finfo(dtype).max
        key = str(dtype).removeprefix("torch.")
        tensors[f"{key}.ok"] = torch.randn(5, 7, generator=gen).to(dtype)
        tensors[f"{key}.empty"] = torch.empty(0, 3, dtype=dtype)
        # finite values whose sum overflows: the sum alone would call them bad
        tensors[f"{key}.overflowing_sum"] = torch.full((64,), big, dtype=dtype)
        tensors[f"{key}.opposite_infs"] = torch.tensor([big, -big, big, -big], dtype=dtype)
        for bad, value in (("nan", float("nan")), ("inf", float("inf")), ("ninf", -float("inf"))):
            t = torch.randn(4, 9, generator=gen).to(dtype)
            t[2, 5] = value
            tensors[f"{key}.{bad}"] = t
        both = torch.zeros(3, dtype=dtype)
        both[0], both[1] = float("inf"), -float("inf")  # the sum is NaN: still reported
        tensors[f"{key}.both_infs"] = both
    tensors["int.ok"] = torch.arange(10)
    expected = _reference(tensors)
    assert len(expected) == 4 * len(DTYPES)  # the nan/inf/ninf/both_infs of every dtype
    assert nonfinite_names(tensors) == expected
    assert nonfinite_names({}) == []


def test_nonfinite_names_of_a_non_contiguous_view() -> None:
    t = torch.randn(6, 6)
    t[1, 4] = float("nan")
    view = t.t()[::2]  # strided: the NaN sits at row 2, column 1 of the view
    assert not view.is_contiguous()
    assert nonfinite_names({"v": view}) == _reference({"v": view}) == ["v"]


def _tensors(backbone: VisionTransformer) -> dict[str, torch.Tensor]:
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    bank.add("src", "loaa", LOAA, HEAD)
    randomise(bank, "src", seed=5)
    return {k: v.clone() for k, v in bank.adapter_tensors("src").items()}


def _slot_is_zero(bank: AdapterBank, slot: int) -> bool:
    stack = next(iter(bank.stacks.values()))
    return all(p[slot].abs().sum() == 0 for p in stack.parameters())


def test_bank_load_refuses_nan_by_default_and_writes_nothing(
    tiny_backbone: VisionTransformer,
) -> None:
    tensors = _tensors(tiny_backbone)
    name = next(n for n in sorted(tensors) if not n.startswith("head."))
    tensors[name].view(-1)[0] = float("nan")
    bank = AdapterBank.for_backbone(tiny_backbone, capacity=1)
    reservation = bank.reserve("bad", "loaa", LOAA, HEAD)
    with pytest.raises(InvalidCheckpoint, match=f"{name} contains NaN or Inf"):
        bank.load(reservation, tensors)
    assert _slot_is_zero(bank, reservation.slot)
    bank.abort(reservation)


def test_bank_load_validated_skips_only_the_scan(tiny_backbone: VisionTransformer) -> None:
    tensors = _tensors(tiny_backbone)
    checked = AdapterBank.for_backbone(tiny_backbone, capacity=1)
    trusted = AdapterBank.for_backbone(tiny_backbone, capacity=2)
    for bank, cls in ((checked, AdapterCheckpoint), (trusted, ValidatedCheckpoint)):
        reservation = bank.reserve("a", "loaa", LOAA, HEAD)
        bank.load(reservation, _checkpoint(tiny_backbone, tensors, cls))
        bank.publish(reservation)
    for name, tensor in checked.adapter_tensors("a").items():
        assert torch.equal(trusted.adapter_tensors("a")[name], tensor), name
        assert torch.equal(tensors[name], tensor), name
    # names and shapes are still checked for a ValidatedCheckpoint
    wrong = dict(tensors)
    name = next(n for n in sorted(wrong) if not n.startswith("head."))
    wrong[name] = torch.zeros(2, 2)
    reservation = trusted.reserve("b", "loaa", LOAA, HEAD)
    with pytest.raises(InvalidCheckpoint, match=name):
        trusted.load(reservation, _checkpoint(tiny_backbone, wrong, ValidatedCheckpoint))
    trusted.abort(reservation)


def _checkpoint(
    backbone: VisionTransformer, tensors: dict[str, torch.Tensor], cls: type[AdapterCheckpoint]
) -> AdapterCheckpoint:
    """``tensors`` under a real manifest, as an ``cls`` (the bank decides by the type alone)."""
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    bank.add("src", "loaa", LOAA, HEAD)
    snapshot = AdapterCheckpoint.from_bank(
        bank,
        "src",
        name="src",
        version=1,
        task="t",
        task_type="multiclass",
        labels=["a", "b", "c"],
        features=FeatureConfig(),
        backbone=backbone,
    )
    return cls(snapshot.manifest, tensors)


def test_bank_load_skips_the_scan_only_for_a_validated_checkpoint(
    tiny_backbone: VisionTransformer,
) -> None:
    tensors = _tensors(tiny_backbone)
    name = next(n for n in sorted(tensors) if not n.startswith("head."))
    tensors[name].view(-1)[0] = float("nan")
    bank = AdapterBank.for_backbone(tiny_backbone, capacity=2)
    plain = _checkpoint(tiny_backbone, tensors, AdapterCheckpoint)
    reservation = bank.reserve("plain", "loaa", LOAA, HEAD)
    with pytest.raises(InvalidCheckpoint, match=f"{name} contains NaN or Inf"):
        bank.load(reservation, plain)
    bank.abort(reservation)
    # a ValidatedCheckpoint was scanned when it was validated: the bank trusts its values
    validated = _checkpoint(tiny_backbone, tensors, ValidatedCheckpoint)
    reservation = bank.reserve("validated", "loaa", LOAA, HEAD)
    bank.load(reservation, validated)
    bank.publish(reservation)
    loaded = bank.adapter_tensors("validated")[name]
    torch.testing.assert_close(loaded, tensors[name], equal_nan=True)
    # names and shapes are still checked
    wrong = dict(tensors)
    wrong[name] = torch.zeros(2, 2)
    reservation = bank.reserve("wrong", "loaa", LOAA, HEAD)
    with pytest.raises(InvalidCheckpoint, match=name):
        bank.load(reservation, _checkpoint(tiny_backbone, wrong, ValidatedCheckpoint))
    bank.abort(reservation)
