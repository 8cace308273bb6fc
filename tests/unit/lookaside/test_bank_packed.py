"""PackedAdapter (an adapter checked and packed once) and the bank's byte accounting.

A packed load must give exactly what a checkpoint load gives (the same slot values, bit for bit,
so the same logits), and both must equal the plain-PyTorch reference of
``test_reference_oracles`` computed from the checkpoint file's tensors; a packed load packs
nothing again and scans nothing (counted). Sizes are checked by counting bytes: ``nbytes`` is
the tensors' bytes, ``slot_bytes`` is what growing a stack by one slot allocates.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest
import torch

from lookaside.adapters import HeadConfig
from lookaside.adapters.shapes import head_shapes, total_numel
from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank, PackedAdapter
from lookaside.bank.packed import pinned_block_bytes
from lookaside.checkpoint import AdapterCheckpoint, ValidatedCheckpoint, load_checkpoint
from lookaside.errors import ConfigError, InvalidCheckpoint
from lookaside.features import FeatureConfig
from lookaside.model import MultiAdapterModel
from tests.support import randomise
from tests.unit.lookaside.test_reference_oracles import (
    Adapter,
    reference_logits,
    reference_tokens,
)

LOAA = {"rank": 3, "kernels": "attn:T,ffn:F"}
LORA = {"rank": 2, "alpha": 4.0}
LABELS = ["a", "b", "c"]
ADAPTERS: dict[str, tuple[str, dict[str, object], HeadConfig]] = {
    "loaa@1": ("loaa", LOAA, HeadConfig(num_classes=3)),
    "lora@1": ("lora", LORA, HeadConfig(num_classes=3, pool="mean")),
    "probe@1": ("linear", {}, HeadConfig(num_classes=3)),
}
BATCHES: list[list[str | None]] = [
    ["loaa@1", "lora@1", None, "probe@1", "lora@1"],
    ["lora@1", "lora@1"],
    ["probe@1", "loaa@1", "loaa@1"],
]


@pytest.fixture(scope="module")
def checkpoints(
    tiny_backbone: VisionTransformer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ValidatedCheckpoint]:
    """Every adapter of ``ADAPTERS`` saved and read back through the validating loader."""
    root = tmp_path_factory.mktemp("store")
    donor = AdapterBank.for_backbone(tiny_backbone, capacity=2)
    out = {}
    for i, (adapter_id, (method, cfg, head)) in enumerate(ADAPTERS.items()):
        donor.add(adapter_id, method, cfg, head)
        randomise(donor, adapter_id, seed=30 + i)
        name = adapter_id.split("@")[0]
        ckpt = AdapterCheckpoint.from_bank(
            donor,
            adapter_id,
            name=name,
            version=1,
            task="test",
            task_type="multiclass",
            labels=LABELS,
            features=FeatureConfig(),
            backbone=tiny_backbone,
        )
        ckpt.save(root / name / "1")
        out[adapter_id] = load_checkpoint(root / name / "1", backbone=tiny_backbone)
    return out


def _packed(
    bank: AdapterBank, ckpt: ValidatedCheckpoint, *, dtype: torch.dtype | None = None
) -> PackedAdapter:
    m = ckpt.manifest
    expected = bank.expected_shapes(m.method, m.config, m.head_config())
    return PackedAdapter.of(ckpt, expected=expected, dtype=dtype or bank.dtype, pin=False)


def _count(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Count calls of ``module.name`` (still calling it)."""
    calls: list[int] = []
    original: Callable[..., Any] = getattr(module, name)

    def counted(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        return original(*args, **kw)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_packed_load_equals_checkpoint_load_and_the_plain_reference(
    tiny_backbone: VisionTransformer,
    checkpoints: dict[str, ValidatedCheckpoint],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mixed batches (two stacks, a head-only probe, a bare row) give bit-identical logits from
    a bank loaded from checkpoints and one loaded from packed adapters (in other slots: a decoy
    takes slot 0), and both equal the reference computed from the checkpoint files' tensors.
    The packed loads check no tensor and pack nothing (counted)."""
    import lookaside.bank as bank_module
    import lookaside.bank.transfer as transfer_module

    by_ckpt = AdapterBank.for_backbone(tiny_backbone, capacity=2)
    for adapter_id, ckpt in checkpoints.items():
        m = ckpt.manifest
        by_ckpt.add(adapter_id, m.method, m.config, m.head_config(), ckpt)
    by_packed = AdapterBank.for_backbone(tiny_backbone, capacity=2)
    packed = {a: _packed(by_packed, c) for a, c in checkpoints.items()}
    checks = _count(monkeypatch, bank_module, "check_tensors")
    packs = _count(monkeypatch, transfer_module, "pack")
    for adapter_id, p in packed.items():
        m = p.manifest
        by_packed.add("decoy", m.method, m.config, m.head_config(), seed=5)
        reservation = by_packed.reserve(adapter_id, m.method, m.config, m.head_config())
        by_packed.load(reservation, p)
        by_packed.publish(reservation)
        by_packed.remove("decoy")
    assert (checks, packs) == ([], [])
    for adapter_id in ("loaa@1", "lora@1"):
        assert by_packed.entries[adapter_id].slot == 1 != by_ckpt.entries[adapter_id].slot
    for adapter_id, ckpt in checkpoints.items():
        got = by_packed.adapter_tensors(adapter_id)
        assert got.keys() == ckpt.tensors.keys()
        assert all(torch.equal(got[n], t) for n, t in ckpt.tensors.items()), adapter_id

    w = {k: v.double() for k, v in tiny_backbone.state_dict().items()}
    cfg = tiny_backbone.cfg
    gen = torch.Generator().manual_seed(3)
    models = MultiAdapterModel(tiny_backbone, by_ckpt), MultiAdapterModel(tiny_backbone, by_packed)
    for ids in BATCHES:
        spec = torch.randn(len(ids), cfg.num_frames, cfg.num_mel_bins, generator=gen)
        with torch.no_grad():
            from_ckpt, from_packed = (model(spec, ids) for model in models)
        for row, adapter_id in enumerate(ids):
            a, b = from_ckpt[row], from_packed[row]
            if adapter_id is None:
                assert a is None
                assert b is None
                continue
            assert a is not None
            assert b is not None
            assert torch.equal(a, b), (ids, row)
            method, raw, head = ADAPTERS[adapter_id]
            tensors = {k: v.double() for k, v in checkpoints[adapter_id].tensors.items()}
            adapter = Adapter(method, raw, tensors, head)
            tokens, n_prompts = reference_tokens(w, cfg, spec[row : row + 1].double(), adapter)
            ref = reference_logits(tokens, adapter, cfg.num_prefix_tokens, n_prompts)
            torch.testing.assert_close(b.double(), ref[0], atol=1e-5, rtol=1e-5)


def test_the_packed_buffer_is_never_written(
    tiny_backbone: VisionTransformer, checkpoints: dict[str, ValidatedCheckpoint]
) -> None:
    """One packed adapter loads into many slots; writing a slot later leaves the buffer (what
    a host cache keeps) as it was: the slot holds a copy, not a view."""
    bank = AdapterBank.for_backbone(tiny_backbone, capacity=2)
    p = _packed(bank, checkpoints["loaa@1"])
    before = p.buffer.clone()
    m = p.manifest
    for adapter_id in ("x", "y"):
        bank.add(adapter_id, m.method, m.config, m.head_config(), p)
    randomise(bank, "x", seed=99)
    assert torch.equal(p.buffer, before)
    y = bank.adapter_tensors("y")
    assert all(torch.equal(y[n], t) for n, t in checkpoints["loaa@1"].tensors.items())


def test_packing_is_exact(
    tiny_backbone: VisionTransformer, checkpoints: dict[str, ValidatedCheckpoint]
) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        bank = AdapterBank.for_backbone(tiny_backbone, dtype=dtype)
        for ckpt in checkpoints.values():
            p = _packed(bank, ckpt)
            m = ckpt.manifest
            tensor_bytes = sum(t.numel() for t in ckpt.tensors.values()) * dtype.itemsize
            assert p.nbytes == p.nbytes_allocated == tensor_bytes
            assert p.nbytes == bank.expected_bytes(m.method, m.config, m.head_config())
            assert p.buffer.dim() == 1
            assert p.buffer.dtype == dtype
            assert not p.buffer.is_pinned()
            assert p.names == tuple(sorted(ckpt.tensors))
            assert p.manifest is m
            assert p.numels == tuple(ckpt.tensors[n].numel() for n in p.names)
            views = p.views()
            assert all(torch.equal(views[n], t.to(dtype)) for n, t in ckpt.tensors.items())
    assert [pinned_block_bytes(n) for n in (0, 1, 5, 4096, 4097)] == [0, 1, 8, 4096, 8192]


def test_a_packed_fp32_adapter_loads_into_a_bf16_bank_as_a_checkpoint_does(
    tiny_backbone: VisionTransformer, checkpoints: dict[str, ValidatedCheckpoint]
) -> None:
    ckpt = checkpoints["lora@1"]
    m = ckpt.manifest
    banks = [AdapterBank.for_backbone(tiny_backbone, dtype=torch.bfloat16) for _ in range(2)]
    banks[0].add("a", m.method, m.config, m.head_config(), ckpt)
    banks[1].add(
        "a", m.method, m.config, m.head_config(), _packed(banks[1], ckpt, dtype=torch.float32)
    )
    a, b = (bank.adapter_tensors("a") for bank in banks)
    assert all(torch.equal(a[n], b[n]) and b[n].dtype == torch.bfloat16 for n in a)


def test_mismatched_names_and_shapes_are_refused(
    tiny_backbone: VisionTransformer, checkpoints: dict[str, ValidatedCheckpoint]
) -> None:
    bank = AdapterBank.for_backbone(tiny_backbone, capacity=2)
    ckpt = checkpoints["loaa@1"]
    m = ckpt.manifest
    expected = bank.expected_shapes(m.method, m.config, m.head_config())
    other = bank.expected_shapes("loaa", {**LOAA, "rank": 4}, m.head_config())
    with pytest.raises(InvalidCheckpoint, match="has shape"):
        PackedAdapter.of(ckpt, expected=other, dtype=bank.dtype, pin=False)
    missing = dict(list(expected.items())[1:])
    with pytest.raises(InvalidCheckpoint, match="unexpected tensors"):
        PackedAdapter.of(ckpt, expected=missing, dtype=bank.dtype, pin=False)
    with pytest.raises(InvalidCheckpoint, match="missing tensors"):
        PackedAdapter.of(
            ckpt, expected={**expected, "head.extra": (3,)}, dtype=bank.dtype, pin=False
        )
    with pytest.raises(TypeError, match="ValidatedCheckpoint"):
        PackedAdapter.of(
            AdapterCheckpoint(m, ckpt.tensors),  # type: ignore[arg-type]
            expected=expected,
            dtype=bank.dtype,
            pin=False,
        )
    with pytest.raises(ConfigError, match="floating-point"):
        PackedAdapter.of(ckpt, expected=expected, dtype=torch.int32, pin=False)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs CUDA"):
            PackedAdapter.of(ckpt, expected=expected, dtype=bank.dtype, pin=True)

    # a packed adapter offered to a slot of another config: refused before anything is written
    p = _packed(bank, ckpt)
    reservation = bank.reserve("wrong", "loaa", {**LOAA, "rank": 4}, HeadConfig(num_classes=5))
    with pytest.raises(InvalidCheckpoint, match="does not fit this slot.*has shape"):
        bank.load(reservation, p)
    assert reservation.state == "reserved"
    stack = bank.stacks[reservation.stack_key or ""]
    assert all(t[reservation.slot].abs().sum() == 0 for t in stack.parameters())
    bank.abort(reservation)
    assert bank.ids() == []


def test_slot_bytes_is_what_growing_a_stack_by_one_slot_allocates(
    tiny_backbone: VisionTransformer,
) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        bank = AdapterBank.for_backbone(tiny_backbone, capacity=2, dtype=dtype)
        assert bank.allocated_bytes() == bank.used_bytes() == 0
        head = HeadConfig(num_classes=3)
        head_bytes = total_numel(head_shapes(head, tiny_backbone.cfg.embed_dim)) * dtype.itemsize
        per_slot = bank.slot_bytes("loaa", LOAA)
        assert per_slot == (bank.expected_bytes("loaa", LOAA, head) - head_bytes)
        assert per_slot > 0
        assert bank.slot_bytes("linear", {}) == 0
        bank.add("a", "loaa", LOAA, head)
        assert bank.allocated_bytes() == 2 * per_slot + head_bytes  # the stack at capacity
        assert bank.used_bytes() == bank.adapter_bytes("a") == per_slot + head_bytes
        for capacity in (3, 4, 7):
            before = bank.allocated_bytes()
            grown_from = bank.stack_capacity("loaa", LOAA)
            bank.grow("loaa", LOAA, capacity)
            assert bank.allocated_bytes() - before == (capacity - grown_from) * per_slot
        bank.add("b", "lora", LORA, head)
        bank.add("p", "linear", {}, head)
        assert bank.used_bytes() == sum(bank.adapter_bytes(a) for a in bank.ids())
        assert bank.allocated_bytes() == (
            7 * per_slot + 2 * bank.slot_bytes("lora", LORA) + 3 * head_bytes
        )


def test_allocated_bytes_counts_what_routes_keep_alive(tiny_backbone: VisionTransformer) -> None:
    """A removed adapter's head and a freed stack stay in memory while a route holds them:
    counted until then, and not after (counting bytes); a reservation's head is counted."""
    bank = AdapterBank.for_backbone(tiny_backbone, capacity=2)
    head = HeadConfig(num_classes=3)
    bank.add("keep", "loaa", LOAA, head)
    base = bank.allocated_bytes()
    bank.add("b", "bottleneck", {"rank": 2}, head)
    with_b = bank.allocated_bytes()
    b_bytes = bank.adapter_bytes("b")
    used = bank.used_bytes()
    route = bank.route(["b", "keep"])
    bank.remove("b")
    assert bank.used_bytes() == used - b_bytes
    assert bank.allocated_bytes() == with_b  # its slot retired, its head in the route
    route.release()  # the bottleneck stack is freed by the bank, but the route still has it
    assert "bottleneck" not in "".join(bank.stacks.keys())
    assert bank.allocated_bytes() == with_b
    del route
    gc.collect()
    assert bank.allocated_bytes() == base
    reservation = bank.reserve("r", "loaa", LOAA, head)
    assert bank.allocated_bytes() == base + b_bytes - bank.slot_bytes("bottleneck", {"rank": 2})
    bank.abort(reservation)
    del reservation
    gc.collect()
    assert bank.allocated_bytes() == base


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_packed_load_on_cuda(
    tiny_backbone: VisionTransformer, checkpoints: dict[str, ValidatedCheckpoint]
) -> None:
    """Pinned buffer (its block rounded up to a power of two), one copy on the side stream:
    the reservation keeps the buffer until publish; slot values equal the checkpoint's."""
    backbone = VisionTransformer(tiny_backbone.cfg)
    backbone.load_weights(tiny_backbone.state_dict())
    backbone.to("cuda")
    bank = AdapterBank.for_backbone(backbone, capacity=2)
    by_ckpt = AdapterBank.for_backbone(backbone, capacity=2)
    for adapter_id, ckpt in checkpoints.items():
        m = ckpt.manifest
        expected = bank.expected_shapes(m.method, m.config, m.head_config())
        p = PackedAdapter.of(ckpt, expected=expected, dtype=bank.dtype, pin=True)
        assert p.buffer.is_pinned()
        assert p.buffer.device.type == "cpu"
        assert p.nbytes_allocated == pinned_block_bytes(p.nbytes) >= p.nbytes
        reservation = bank.reserve(adapter_id, m.method, m.config, m.head_config())
        bank.load(reservation, p)
        assert reservation._event is not None
        assert reservation._staging is p.buffer
        bank.publish(reservation)
        by_ckpt.add(adapter_id, m.method, m.config, m.head_config(), ckpt)
        got = bank.adapter_tensors(adapter_id)
        assert all(torch.equal(got[n].cpu(), t) for n, t in ckpt.tensors.items())
    cfg = tiny_backbone.cfg
    spec = torch.randn(5, cfg.num_frames, cfg.num_mel_bins).cuda()
    ids = BATCHES[0]
    with torch.no_grad():
        a = MultiAdapterModel(backbone, bank)(spec, ids)
        b = MultiAdapterModel(backbone, by_ckpt)(spec, ids)
    for x, y in zip(a, b, strict=True):
        assert (x is None) == (y is None)
        if x is not None and y is not None:
            torch.testing.assert_close(x, y, atol=0, rtol=0)
