"""AVE loader (annotations, splits, per-second labels) and a tiny AV-PEA trained with the shared
loop on synthetic AVE-layout videos that must localise the event seconds."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lookaside.adapters import HeadConfig
from lookaside.backbones import build_random
from lookaside.bank import AdapterBank
from lookaside.features import FeatureConfig
from lookaside.model import MultiAdapterModel
from tests.av_synth import Clip, Second, encode
from training.datasets.ave import (
    AveFeatureCache,
    AveVideo,
    ave_loader,
    load,
    parse_annotations,
    second_labels,
)
from training.datasets.base import DatasetError
from training.datasets.options import DataOptions
from training.loop import LoopConfig, evaluate, fit, load_adapter_tensors
from training.tasks.av_events import AvForward

HEADER = "Category&VideoID&Quality&StartTime&EndTime"
EVENTS = {  # category -> (colour, tone)
    "Bark": ((220, 40, 40), 440.0),
    "Church bell": ((40, 200, 60), 1500.0),
    "Flute": ((40, 70, 220), 2600.0),
}
BACKGROUND = ((90, 90, 90), None)


def test_annotations_with_and_without_header(tmp_path: Path) -> None:
    rows = ["Church bell&RUhOCu3LNXM&good&0&10", "Bark&abc-_12&good&3&7"]
    for name, lines in (("with.txt", [HEADER, *rows]), ("without.txt", rows)):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        parsed = parse_annotations(tmp_path / name)
        assert [(a.category, a.video_id, a.start_s, a.end_s) for a in parsed] == [
            ("Church bell", "RUhOCu3LNXM", 0.0, 10.0),
            ("Bark", "abc-_12", 3.0, 7.0),
        ]


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("Bark&id&good&3", "expected 5 '&'-separated fields"),
        ("Bark&id&good&three&7", "must be numbers"),
        ("Bark&id&good&7&3", "StartTime < EndTime"),
    ],
)
def test_malformed_annotations_name_the_line(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "Annotations.txt"
    path.write_text(f"Bark&ok&good&0&1\n{line}\n")
    with pytest.raises(DatasetError, match=rf"Annotations.txt:2: .*{match}"):
        parse_annotations(path)


def test_a_second_is_the_event_when_start_le_t_lt_end() -> None:
    assert second_labels(4, 3, 7, background=9) == (9, 9, 9, 4, 4, 4, 4, 9, 9, 9)
    assert second_labels(1, 0, 10, background=2) == (1,) * 10
    assert second_labels(0, 2.5, 4, background=5) == (5, 5, 5, 0, 5, 5, 5, 5, 5, 5)


def _video(category: str, start: int, end: int) -> bytes:
    colour, tone = EVENTS[category]
    seconds = [Second(colour, tone) if start <= t < end else Second(*BACKGROUND) for t in range(10)]
    return encode(Clip(seconds, fps=2, size=(48, 48), container="mp4", audio_codec="aac"))


def make_ave(root: Path, counts: dict[str, int], seed: int = 0, header: bool = True) -> None:
    """An AVE-layout folder of synthetic videos: each shows one event for a random stretch."""
    rng = random.Random(seed)
    (root / "AVE").mkdir(parents=True)
    everything: list[str] = []
    for split, count in counts.items():
        lines = []
        for i in range(count):
            category = list(EVENTS)[i % len(EVENTS)]
            start = rng.randint(0, 6)
            end = rng.randint(start + 2, 10)
            video_id = f"{split}{i:03d}"
            (root / "AVE" / f"{video_id}.mp4").write_bytes(_video(category, start, end))
            lines.append(f"{category}&{video_id}&good&{start}&{end}")
        file_name = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}[split]
        (root / file_name).write_text("\n".join(lines) + "\n")
        everything += lines
    (root / "Annotations.txt").write_text("\n".join([HEADER] * header + everything) + "\n")


def test_loader_reads_the_official_layout(tmp_path: Path) -> None:
    make_ave(tmp_path, {"train": 3, "val": 1, "test": 1}, header=False)
    splits = load(DataOptions(root=tmp_path))
    assert splits.labels == ["Bark", "Church bell", "Flute", "background"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 1, 1)
    first = splits.train[0]
    line = (tmp_path / "trainSet.txt").read_text().splitlines()[0]
    start, end = (float(v) for v in line.split("&")[3:5])
    assert first.labels == second_labels(0, start, end, 3)
    (tmp_path / "AVE" / "test000.mp4").unlink()
    with pytest.raises(DatasetError, match="1 AVE videos .* missing: .*test000.mp4"):
        load(DataOptions(root=tmp_path))
    (tmp_path / "valSet.txt").unlink()
    with pytest.raises(DatasetError, match="valSet.txt is missing"):
        load(DataOptions(root=tmp_path))


def test_feature_cache_decodes_each_video_once(tmp_path: Path) -> None:
    make_ave(tmp_path / "ave", {"train": 1, "val": 1, "test": 1})
    splits = load(DataOptions(root=tmp_path / "ave"))
    features = FeatureConfig(num_mel_bins=64, target_frames=100)
    cache = AveFeatureCache(tmp_path / "cache", features, (48, 48))
    spec, frames = cache.get(splits.train[0].path)
    again, frames_again = cache.get(splits.train[0].path)
    assert (cache.misses, cache.hits) == (1, 1)
    assert spec.shape == (10, 100, 64)
    assert frames.shape == (10, 48, 48, 3)
    assert frames.dtype == torch.uint8
    assert torch.equal(spec, again)
    assert torch.equal(frames, frames_again)


def test_tiny_avpea_localises_the_events(tmp_path: Path) -> None:
    """A few epochs of the shared loop; per-second accuracy on unseen test videos >= 90 %."""
    torch.set_num_threads(1)
    make_ave(tmp_path / "ave", {"train": 18, "val": 6, "test": 9}, seed=1)
    splits = load(DataOptions(root=tmp_path / "ave"))
    backbone = build_random("test_vit_av", seed=0)
    features = FeatureConfig(num_mel_bins=64, target_frames=100)
    cache = AveFeatureCache(tmp_path / "cache", features, backbone.cfg.image_size)
    bank = AdapterBank.for_backbone(backbone, trainable=True)
    classes = len(splits.labels)
    bank.add("t", "avpea", {"temporal_heads": 2}, HeadConfig(num_classes=classes), seed=0)
    model = MultiAdapterModel(backbone, bank)
    module = AvForward(model, "t", features)

    def loader(videos: list[AveVideo], shuffle: bool) -> DataLoader[tuple[Tensor, Tensor]]:
        return ave_loader(videos, cache, batch_size=6, shuffle=shuffle, seed=0)

    state = fit(
        module,
        bank.trainable_parameters("t"),
        loader(splits.train, True),
        loader(splits.val, False),
        LoopConfig(epochs=12, lr=3e-3, warmup_epochs=1, progress=False),
        num_classes=classes,
        device=torch.device("cpu"),
        snapshot=lambda: bank.adapter_tensors("t"),
    )
    load_adapter_tensors(bank, "t", state.best_tensors)
    result = evaluate(
        module, loader(splits.test, False), device=torch.device("cpu"), num_classes=classes
    )
    assert result.count == 9 * 10  # every second of every test video
    print(f"AVE-synthetic per-second test accuracy: {100 * result.accuracy:.1f} %")
    assert result.accuracy >= 0.9, result.accuracy
    gates = [t for k, t in bank.adapter_tensors("t").items() if "gate_out" in k]
    assert any(float(g.abs().max()) > 0 for g in gates)  # the adapters themselves trained
