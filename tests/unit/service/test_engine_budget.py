"""The per-forward budget: no forward holds more than ``max_batch_tokens`` patch tokens (rows x
tokens per row), a job larger than one forward runs in chunks that take turns with other jobs,
a job whose single row is over the budget is refused at submit, and chunks past the deadline
are dropped. Every forward is counted by a spy on the model; every answer equals the job run
alone (the library on one row, no engine code)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future

import pytest
import torch
from torch import Tensor

from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.errors import LookasideError
from lookaside.model import MultiAdapterModel
from service.engine import Engine, OverBudget
from service.errors import RequestTimeout, status_of
from tests.integration.service.av_support import av_checkpoint, tiny_av
from tests.integration.service.svc_support import SHORT_FEATURES, make_checkpoint, tiny

PATCH = 16


def tokens(frames: int, mel: int) -> int:
    """Patch tokens of one row on the tiny ViT/16 (16 x 16 patches, stride 16), by hand."""
    return ((mel - PATCH) // PATCH + 1) * ((frames - PATCH) // PATCH + 1)


@pytest.fixture(scope="module")
def backbone() -> VisionTransformer:
    return tiny()


@pytest.fixture(scope="module")
def adapters(backbone: VisionTransformer) -> dict[str, AdapterCheckpoint]:
    return {
        "lora": make_checkpoint(backbone, "lora", method="lora", seed=1),
        "bottleneck": make_checkpoint(backbone, "bn", method="bottleneck", seed=2),
        "short": make_checkpoint(backbone, "short", features=SHORT_FEATURES, seed=3),
    }


class Spy:
    """Records (grid, rows, tokens, adapter ids) of every forward the engine runs."""

    def __init__(self, engine: Engine) -> None:
        self.calls: list[tuple[tuple[int, int], int, int, list[str | None]]] = []
        real = engine.model.forward

        def forward(spec: Tensor, ids: Sequence[str | None]) -> list[Tensor | None]:
            rows, frames, mel = spec.shape
            self.calls.append(((frames, mel), rows, rows * tokens(frames, mel), list(ids)))
            return real(spec, ids)

        engine.model.forward = forward  # type: ignore[method-assign]


@pytest.fixture
def budget_engine(
    backbone: VisionTransformer, adapters: dict[str, AdapterCheckpoint]
) -> Iterator[Engine]:
    """Budget 256 tokens: 4 rows of the 128-frame grid (64 tokens), 8 of the 64-frame one (32)."""
    engine = Engine(
        backbone,
        device=torch.device("cpu"),
        max_batch_size=32,
        max_wait_ms=1.0,
        max_batch_tokens=256,
    )
    for ckpt in adapters.values():
        engine.load_adapter(ckpt).result(timeout=30)
    yield engine
    engine.stop(drain=False)


def reference(backbone: VisionTransformer, ckpt: AdapterCheckpoint, rows: Tensor) -> Tensor:
    """``ckpt`` alone on each row, one forward per row, in a bank of its own."""
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    ckpt.load_into(bank, "ref")
    model = MultiAdapterModel(backbone, bank).eval()
    out = []
    with torch.inference_mode():
        for row in rows:
            (logits,) = model(row[None], ["ref"])
            assert logits is not None
            out.append(logits)
    return torch.stack(out)


def feats(rows: int, frames: int, seed: int) -> Tensor:
    return torch.randn(rows, frames, 128, generator=torch.Generator().manual_seed(seed))


def test_mixed_skewed_and_oversized_jobs_never_exceed_the_budget(
    budget_engine: Engine, backbone: VisionTransformer, adapters: dict[str, AdapterCheckpoint]
) -> None:
    spy = Spy(budget_engine)
    jobs = [
        ("lora", feats(1, 128, 1)),  # skewed: one row of one adapter ...
        ("bottleneck", feats(3, 128, 2)),  # ... three of another
        ("lora", feats(10, 128, 3)),  # 10 rows x 64 tokens: 2.5 forwards' worth
        ("short", feats(5, 64, 4)),  # another grid: 5 x 32 tokens
        ("bottleneck", feats(2, 128, 5)),
        ("short", feats(11, 64, 6)),  # 11 x 32 = 352 tokens: over one forward too
    ]
    futures = [budget_engine.submit(x, adapters[name].manifest.id) for name, x in jobs]
    budget_engine.start()
    results = [f.result(timeout=60) for f in futures]

    assert all(t <= 256 for _, _, t, _ in spy.calls), spy.calls
    assert sum(rows for _, rows, _, _ in spy.calls) == sum(x.shape[0] for _, x in jobs)
    for (name, x), out in zip(jobs, results, strict=True):
        assert out.shape == (x.shape[0], len(adapters[name].manifest.labels))
        torch.testing.assert_close(
            out, reference(backbone, adapters[name], x), atol=2e-5, rtol=1e-4
        )


def test_a_job_larger_than_one_forward_takes_turns_with_other_jobs(
    budget_engine: Engine, adapters: dict[str, AdapterCheckpoint]
) -> None:
    """10 rows at 4 per forward: 3 chunks. A job of another grid queued after it runs between
    its chunks, not after all of them; the big job's rows come back whole and in order."""
    spy = Spy(budget_engine)
    big_id, other_id = adapters["lora"].manifest.id, adapters["short"].manifest.id
    big = budget_engine.submit(feats(10, 128, 7), big_id)
    other = budget_engine.submit(feats(2, 64, 8), other_id)
    done: list[str] = []
    big.add_done_callback(lambda _: done.append("big"))
    other.add_done_callback(lambda _: done.append("other"))
    budget_engine.start()
    assert big.result(timeout=60).shape[0] == 10
    other.result(timeout=60)
    grids = [grid for grid, _, _, _ in spy.calls]
    assert grids == [(128, 128), (64, 128), (128, 128), (128, 128)]
    assert [rows for _, rows, _, _ in spy.calls] == [4, 2, 4, 2]
    assert done == ["other", "big"]


def test_a_row_over_the_budget_is_refused_at_submit(
    backbone: VisionTransformer, adapters: dict[str, AdapterCheckpoint]
) -> None:
    engine = Engine(backbone, device=torch.device("cpu"), max_batch_tokens=63)
    try:
        with pytest.raises(OverBudget) as info:
            engine.submit(feats(1, 128, 0), adapters["lora"].manifest.id)
        message = str(info.value)
        assert "is 64 tokens, over the per-forward budget max_batch_tokens=63" in message
        assert "LOOKASIDE_MAX_BATCH_TOKENS" in message
        assert isinstance(info.value, LookasideError)
        assert status_of(info.value) == 422
        assert engine.queue_depth == 0
        # the 64-frame grid (32 tokens) fits, one row per forward
        engine.load_adapter(adapters["short"]).result(timeout=30)
        engine.start()
        out = engine.submit(feats(2, 64, 0), adapters["short"].manifest.id).result(timeout=60)
        assert out.shape[0] == 2
        assert engine.batches_run == 2
    finally:
        engine.stop(drain=False)


def test_chunks_of_a_job_past_its_deadline_are_dropped(
    budget_engine: Engine, adapters: dict[str, AdapterCheckpoint]
) -> None:
    """The first chunk runs; the forward outlasts the job's timeout, so its other chunks never
    run and the job is answered 504."""
    spy = Spy(budget_engine)
    counted = budget_engine.model.forward
    never = threading.Event()

    def slow_first(spec: Tensor, ids: Sequence[str | None]) -> list[Tensor | None]:
        if len(spy.calls) == 0:
            never.wait(1.3)  # outlast the job's 1 s timeout
        return counted(spec, ids)

    budget_engine.model.forward = slow_first  # type: ignore[method-assign]
    job: Future[Tensor] = budget_engine.submit(
        feats(12, 128, 9), adapters["lora"].manifest.id, timeout_s=1.0
    )
    budget_engine.start()
    with pytest.raises(RequestTimeout, match="after 4 of its 12 rows ran"):
        job.result(timeout=60)
    assert [rows for _, rows, _, _ in spy.calls] == [4]
    # the engine serves on; nothing of the dropped job is left in the queue
    assert budget_engine.queue_depth == 0
    after = budget_engine.submit(feats(1, 128, 10), adapters["lora"].manifest.id)
    assert after.result(timeout=60).shape[0] == 1


def test_audio_visual_rows_count_both_streams_of_every_segment() -> None:
    """A tiny AV window: 3 segments x (4 x 6 audio + 3 x 3 frame tokens) = 99 tokens; a budget of
    200 holds two windows per forward; 98 refuses the window."""
    backbone = tiny_av()
    scene = av_checkpoint(backbone, "scene", 0)
    gen = torch.Generator().manual_seed(0)
    spec = torch.randn(5, 3, 100, 64, generator=gen)
    pixels = torch.randn(5, 3, 3, 48, 48, generator=gen)

    small = Engine(backbone, device=torch.device("cpu"), max_batch_tokens=98)
    with pytest.raises(OverBudget, match="is 99 tokens, over the per-forward budget"):
        small.submit_av(spec, pixels, scene.manifest.id)
    small.stop(drain=False)

    engine = Engine(backbone, device=torch.device("cpu"), max_wait_ms=1.0, max_batch_tokens=200)
    engine.load_adapter(scene).result(timeout=30)
    windows: list[int] = []
    real = engine.model.forward_av

    def forward_av(s: Tensor, p: Tensor, ids: Sequence[str | None]) -> list[Tensor | None]:
        windows.append(int(s.shape[0]))
        return real(s, p, ids)

    engine.model.forward_av = forward_av  # type: ignore[method-assign]
    engine.start()
    try:
        out = engine.submit_av(spec, pixels, scene.manifest.id).result(timeout=60)
    finally:
        engine.stop()
    assert windows == [2, 2, 1]
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    scene.load_into(bank, "ref")
    model = MultiAdapterModel(backbone, bank).eval()
    with torch.inference_mode():
        for w in range(5):
            (ref,) = model.forward_av(spec[w : w + 1], pixels[w : w + 1], ["ref"])
            assert ref is not None
            torch.testing.assert_close(out[w], ref.float(), atol=1e-5, rtol=1e-4)
