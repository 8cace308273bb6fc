"""EPIC-SOUNDS (Huh et al., ICASSP 2023): 44 classes of sound events in long kitchen recordings.

Layout (github.com/epic-kitchens/epic-sounds-annotations): ``EPIC_Sounds_train.csv`` and
``EPIC_Sounds_validation.csv`` with columns ``annotation_id, participant_id, video_id,
start_timestamp, stop_timestamp, start_sample, stop_sample, description, class, class_id``; the
audio is one recording per ``video_id``, either as files (``<audio>/<video_id>.wav`` or any audio
suffix, also under ``<audio>/<participant_id>/``) or as the official HDF5 file with one dataset
per ``video_id`` (raw samples at 24 kHz). Segments are read by offset (``start_sample`` /
``stop_sample`` in the HDF5, the timestamps in files), never loading a whole recording. The
validation CSV is the evaluation split (the test labels are not public); the best epoch is chosen
on it, as the LoAA paper reports validation results. Top-1 and mAP are reported.
"""

from __future__ import annotations

from pathlib import Path

from lookaside.features import FeatureConfig
from training.datasets.base import (
    AUDIO_SUFFIXES,
    Clip,
    DatasetError,
    DatasetSplits,
    read_csv,
    require_dir,
)
from training.datasets.options import DataOptions
from training.datasets.splitting import fixed_split

COLUMNS = (
    "annotation_id",
    "participant_id",
    "video_id",
    "start_timestamp",
    "stop_timestamp",
    "start_sample",
    "stop_sample",
    "description",
    "class",
    "class_id",
)
FILES = {"train": "EPIC_Sounds_train.csv", "val": "EPIC_Sounds_validation.csv"}
FIXED = "EPIC-SOUNDS fixes its splits (EPIC_Sounds_train.csv, EPIC_Sounds_validation.csv)"
FEATURES = FeatureConfig(target_frames=1024)
"""1024 frames (10.24 s, AST's AudioSet input); EPIC-SOUNDS segments average 4.9 s."""


def timestamp_seconds(text: str) -> float:
    """``HH:MM:SS.fff`` (or ``MM:SS.fff`` / seconds) -> seconds."""
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def _audio_source(opts: DataOptions, root: Path) -> Path:
    if opts.audio is not None:
        if not opts.audio.exists():
            raise DatasetError(f"--audio {opts.audio} does not exist")
        return opts.audio
    h5 = sorted([*root.glob("*.hdf5"), *root.glob("*.h5")])
    if h5:
        return h5[0]
    if (root / "audio").is_dir():
        return root / "audio"
    raise DatasetError(
        f"{root} has no EPIC-KITCHENS audio: expected an .hdf5 file with one dataset per "
        f"video_id, or {root / 'audio'}/<video_id>.wav; or pass --audio PATH"
    )


def _video_file(audio_dir: Path, participant: str, video: str) -> Path | None:
    for folder in (audio_dir, audio_dir / participant):
        for suffix in AUDIO_SUFFIXES:
            path = folder / f"{video}{suffix}"
            if path.is_file():
                return path
    return None


def load(opts: DataOptions) -> DatasetSplits:
    """Train on the train CSV, select and report on the validation CSV."""
    fixed_split(opts, FIXED)
    root = require_dir(opts.root, "the EPIC-SOUNDS directory with EPIC_Sounds_*.csv")
    audio = _audio_source(opts, root)
    h5_keys: set[str] | None = None
    if audio.is_file():
        import h5py  # only EPIC-SOUNDS needs it

        with h5py.File(audio, "r") as f:
            h5_keys = set(f.keys())
    names: dict[int, str] = {}
    splits: dict[str, list[Clip]] = {}
    for split, filename in FILES.items():
        index = root / filename
        clips: list[Clip] = []
        for line, row in enumerate(read_csv(index, COLUMNS), start=2):
            try:
                class_id = int(row["class_id"])
                start, stop = int(row["start_sample"]), int(row["stop_sample"])
                start_s = timestamp_seconds(row["start_timestamp"])
                end_s = timestamp_seconds(row["stop_timestamp"])
            except ValueError:
                raise DatasetError(
                    f"{index} line {line}: class_id, start_sample, stop_sample must be integers "
                    "and the timestamps HH:MM:SS.fff"
                ) from None
            if names.setdefault(class_id, row["class"]) != row["class"]:
                raise DatasetError(
                    f"{index} line {line}: class_id {class_id} is {row['class']!r} here but "
                    f"{names[class_id]!r} elsewhere"
                )
            if stop <= start:
                raise DatasetError(f"{index} line {line}: stop_sample must exceed start_sample")
            video = row["video_id"]
            if h5_keys is not None:
                if video not in h5_keys:
                    raise DatasetError(
                        f"{index} line {line}: video {video!r} has no dataset in {audio}"
                    )
                clips.append(
                    Clip(audio, class_id, None, None, video, start, stop, opts.sample_rate)
                )
            else:
                path = _video_file(audio, row["participant_id"], video)
                if path is None:
                    raise DatasetError(
                        f"{index} line {line}: no audio file for video {video!r} in {audio} "
                        f"(expected {audio}/{video}.wav or another audio suffix)"
                    )
                clips.append(Clip(path, class_id, start_s, end_s))
        splits[split] = clips
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{root}: class_id values must be 0..N-1, found {sorted(names)}")
    return DatasetSplits(
        name="epic_sounds",
        labels=[names[i] for i in range(len(names))],
        train=splits["train"],
        val=splits["val"],
        features=FEATURES,
        task="sound event recognition in egocentric video (EPIC-SOUNDS)",
        report_map=True,
    )


def folds(opts: DataOptions) -> list[int]:
    """Never returns: raises a :class:`DatasetError` (the official split is fixed, so there is
    nothing to cross-validate)."""
    raise DatasetError(f"cannot cross-validate epic_sounds: {FIXED}")
