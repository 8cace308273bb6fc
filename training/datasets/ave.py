"""AVE, the Audio-Visual Event dataset (Tian et al., ECCV 2018), for per-second event localisation.

Layout (the official release, ``AVE_Dataset/``)::

    Annotations.txt                     Category&VideoID&Quality&StartTime&EndTime, one per line
    trainSet.txt valSet.txt testSet.txt the official split, same format
    AVE/<VideoID>.mp4                   10 s videos (``videos/`` is accepted too)

Fields are ``&``-separated; a header line may or may not be present. Every video has
:data:`AVE_SEGMENTS` one-second segments; second ``t`` is labelled with the video's category
when ``StartTime <= t < EndTime`` and ``background`` otherwise, so there are 28 event classes
plus background (classes are the categories found in ``Annotations.txt``, sorted, background
last). The metric is per-second accuracy over all test seconds.

Features are per second (:mod:`lookaside.video`): the spectrogram of each second (the feature
config: ``target_frames=100``, one second) and the frame nearest each second's centre at the
backbone's image size. :class:`AveFeatureCache` decodes each video once and keeps both on disk,
keyed by the file's content, the feature config and the image size. :class:`AveDataset` +
:func:`av_collate` batch whole videos for ``training.loop.fit``/``evaluate`` (one row per video,
targets flattened to one per second); :class:`training.tasks.av_events.AvForward` unpacks them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lookaside.features import FeatureConfig, frames_to_pixels
from lookaside.tasks.av_events import BACKGROUND_LABEL
from lookaside.video import VideoLimits, av_inputs, decode_video
from training.datasets.base import DatasetError, first_few, require_dir, require_file
from training.datasets.options import DataOptions
from training.datasets.splitting import fixed_split

AVE_SEGMENTS = 10
"""One-second segments per AVE video."""
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
VIDEO_DIRS = ("AVE", "videos")
FIELDS = ("Category", "VideoID", "Quality", "StartTime", "EndTime")
AVE_FEATURES = FeatureConfig(target_frames=100, max_seconds=60.0)
"""One second of 128-bin fbank per segment (AudioSet normalisation, as the other datasets)."""
CACHE_FORMAT = 1


@dataclass(frozen=True)
class AveAnnotation:
    """One line of ``Annotations.txt`` or a split file."""

    category: str
    video_id: str
    quality: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class AveVideo:
    """One video with a label per second."""

    video_id: str
    path: Path
    labels: tuple[int, ...]
    """Class index of each one-second segment."""


@dataclass
class AveSplits:
    """AVE ready for training: per-second labelled videos per split."""

    labels: list[str]
    """Event categories (sorted) then ``background``, in logit order."""
    train: list[AveVideo]
    val: list[AveVideo]
    test: list[AveVideo]
    features: FeatureConfig = field(default_factory=lambda: AVE_FEATURES)
    segments: int = AVE_SEGMENTS
    name: str = "ave"
    task: str = "audio-visual event localisation (per second)"
    report_map: bool = False
    """Per-second accuracy is AVE's metric; no mAP in the manifest."""
    split_rows: list[tuple[str, str, str, str, str]] | None = None
    """The official split is used as is: no ``split.csv`` is written."""

    @property
    def background(self) -> int:
        """Index of the background class."""
        return len(self.labels) - 1


def parse_annotations(path: Path) -> list[AveAnnotation]:
    """Rows of an AVE annotation or split file; a header line (``Category&VideoID&...``) is
    skipped when present."""
    require_file(path, "AVE annotations: Category&VideoID&Quality&StartTime&EndTime per line")
    rows: list[AveAnnotation] = []
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("&")]
        if len(parts) != len(FIELDS):
            raise DatasetError(
                f"{path}:{number}: expected {len(FIELDS)} '&'-separated fields "
                f"({'&'.join(FIELDS)}), got {len(parts)}: {line!r}"
            )
        if not rows and parts[0] == FIELDS[0] and parts[3] == FIELDS[3]:
            continue  # the header
        try:
            start, end = float(parts[3]), float(parts[4])
        except ValueError:
            raise DatasetError(
                f"{path}:{number}: StartTime and EndTime must be numbers, got {parts[3]!r} and "
                f"{parts[4]!r}"
            ) from None
        if not 0 <= start < end:
            raise DatasetError(f"{path}:{number}: need 0 <= StartTime < EndTime, got {line!r}")
        rows.append(AveAnnotation(parts[0], parts[1], parts[2], start, end))
    if not rows:
        raise DatasetError(f"{path} holds no annotations")
    return rows


def second_labels(
    event: int, start_s: float, end_s: float, background: int, segments: int = AVE_SEGMENTS
) -> tuple[int, ...]:
    """Label of each second ``t`` in ``range(segments)``: ``event`` when ``start <= t < end``."""
    return tuple(event if start_s <= t < end_s else background for t in range(segments))


def _video_dir(root: Path) -> Path:
    for name in VIDEO_DIRS:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(
        f"{root} has no video folder; expected the videos in {root / VIDEO_DIRS[0]}/<VideoID>.mp4"
    )


FIXED = "AVE fixes its splits (trainSet.txt, valSet.txt, testSet.txt)"


def folds(opts: DataOptions) -> list[int]:
    """Never returns: raises a :class:`DatasetError` (the official split is fixed, so there is
    nothing to cross-validate)."""
    raise DatasetError(f"cannot cross-validate ave: {FIXED}")


def load(opts: DataOptions) -> AveSplits:
    """Read the official AVE layout under ``opts.root`` (see the module docstring)."""
    fixed_split(opts, FIXED)
    root = require_dir(opts.root, "the AVE dataset (Annotations.txt, trainSet.txt, AVE/)")
    annotations = parse_annotations(root / "Annotations.txt")
    labels = [*sorted({a.category for a in annotations}), BACKGROUND_LABEL]
    index = {name: i for i, name in enumerate(labels)}
    videos = _video_dir(root)
    splits: dict[str, list[AveVideo]] = {}
    for split, file_name in SPLIT_FILES.items():
        rows = parse_annotations(root / file_name)
        unknown = sorted({r.category for r in rows} - set(index))
        if unknown:
            raise DatasetError(
                f"{root / file_name} names categories absent from Annotations.txt: {unknown}"
            )
        splits[split] = [
            AveVideo(
                r.video_id,
                videos / f"{r.video_id}.mp4",
                second_labels(index[r.category], r.start_s, r.end_s, len(labels) - 1),
            )
            for r in rows
        ]
    missing = sorted(str(v.path) for vs in splits.values() for v in vs if not v.path.is_file())
    if missing:
        raise DatasetError(
            f"{len(missing)} AVE videos listed in the split files are missing: {first_few(missing)}"
        )
    return AveSplits(labels, splits["train"], splits["val"], splits["test"])


# -- features --------------------------------------------------------------------------------


class AveFeatureCache:
    """Per-second spectrograms and frames of each video, decoded once.

    Entries are ``<root>/<key[:2]>/<key>.safetensors`` holding ``spec`` ``[S, frames, mel]``
    (normalised by the feature config, which is part of the key) and ``frames`` ``[S, H, W, 3]``
    uint8 at the image size (normalised to pixels when read: a quarter of the float size).

    Args:
        root: cache directory; None keeps nothing on disk.
        features: the adapter's feature config.
        image_size: the backbone's image size (``cfg.image_size``).
        segments: segments per video (shorter videos repeat their last second, longer are cut).
    """

    def __init__(
        self,
        root: Path | None,
        features: FeatureConfig,
        image_size: tuple[int, int],
        segments: int = AVE_SEGMENTS,
        limits: VideoLimits | None = None,
    ) -> None:
        self.root = root
        self.features = features
        self.image_size = image_size
        self.segments = segments
        self.limits = limits or VideoLimits(max_seconds=features.max_seconds)
        self.hits = 0
        self.misses = 0
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)

    def key(self, data: bytes) -> str:
        spec = {
            "format": CACHE_FORMAT,
            "content": hashlib.sha256(data).hexdigest(),
            "features": self.features.model_dump(mode="json"),
            "image_size": list(self.image_size),
            "segments": self.segments,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def get(self, path: Path) -> tuple[Tensor, Tensor]:
        """``(spec [S, frames, mel] normalised, frames [S, H, W, 3] uint8)`` of one video."""
        data = path.read_bytes()
        entry = None
        if self.root is not None:
            key = self.key(data)
            entry = self.root / key[:2] / f"{key}.safetensors"
            if entry.is_file():
                self.hits += 1
                stored = load_file(str(entry))
                return stored["spec"], stored["frames"]
        self.misses += 1
        video = decode_video(data, limits=self.limits, frame_size=self.image_size)
        spec, _ = av_inputs(video, self.features, self.image_size)
        frames = video.frames[:, video.frames.shape[1] // 2]
        spec, frames = _fit(spec, self.segments), _fit(frames, self.segments)
        if entry is not None:
            _save_atomic(entry, {"spec": spec.contiguous(), "frames": frames.contiguous()})
        return spec, frames


def _fit(x: Tensor, segments: int) -> Tensor:
    """Cut to ``segments`` or repeat the last segment up to it."""
    if x.shape[0] >= segments:
        return x[:segments]
    return torch.cat([x, x[-1:].expand(segments - x.shape[0], *x.shape[1:])])


def _save_atomic(path: Path, tensors: dict[str, Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- training with the shared loop -------------------------------------------------------------


class AveDataset(Dataset[tuple[Tensor, Tensor]]):
    """``(packed inputs, per-second labels [S])`` per video: the loop moves one tensor per batch,
    so each video's spectrograms and pixels travel packed (``AvForward.unpack``)."""

    def __init__(self, videos: Sequence[AveVideo], cache: AveFeatureCache) -> None:
        self.videos = list(videos)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        video = self.videos[index]
        spec, frames = self.cache.get(video.path)
        pixels = frames_to_pixels(frames, self.cache.image_size)
        labels = torch.tensor(video.labels[: self.cache.segments], dtype=torch.long)
        return torch.cat([spec.flatten(), pixels.flatten()]), labels


def av_collate(batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack the packed inputs; flatten the labels to one per second (the logits' order)."""
    return torch.stack([x for x, _ in batch]), torch.cat([y for _, y in batch])


def ave_loader(
    videos: Sequence[AveVideo],
    cache: AveFeatureCache,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader[tuple[Tensor, Tensor]]:
    """Batches of whole videos for ``training.loop.fit``/``evaluate`` (seeded shuffling)."""
    return DataLoader(
        AveDataset(videos, cache),
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=av_collate,
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        pin_memory=pin_memory,
    )
