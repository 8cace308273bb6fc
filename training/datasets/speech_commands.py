"""Speech Commands v2 (Warden, 2018): 1 s keyword clips, 35 words.

Layout (the official tarball): one folder per word with ``*.wav``; ``validation_list.txt`` and
``testing_list.txt`` list ``word/file.wav`` paths; every other clip is training data;
``_background_noise_/*.wav`` holds long noise recordings that are mixed into training clips as
augmentation (:class:`training.augment.BackgroundNoise`). Short clips are zero-padded to 1 s
(128 frames, the AST setting).
"""

from __future__ import annotations

from pathlib import Path

from lookaside.features import FeatureConfig
from training.datasets.base import (
    Clip,
    DatasetError,
    DatasetSplits,
    check_files,
    require_dir,
    require_file,
)
from training.datasets.options import DataOptions
from training.datasets.splitting import fixed_split

NOISE_DIR = "_background_noise_"
FIXED = (
    "Speech Commands fixes its splits (validation_list.txt and testing_list.txt, which keep "
    "each speaker in one split)"
)
FEATURES = FeatureConfig(target_frames=128)
"""1 s clips: 128 frames (AST's Speech Commands setting), AudioSet mean / std."""


def _read_list(path: Path, root: Path, words: set[str]) -> set[str]:
    require_file(path, "one 'word/file.wav' path per line (the official split list)")
    out: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip()
        if not entry:
            continue
        word = entry.split("/", 1)[0]
        if "/" not in entry or word not in words:
            raise DatasetError(
                f"{path} line {n}: {entry!r} is not 'word/file.wav' with a word folder of {root}"
            )
        out.add(entry)
    return out


def load(opts: DataOptions) -> DatasetSplits:
    """The official train / validation / test split."""
    fixed_split(opts, FIXED)
    root = require_dir(opts.root, "the Speech Commands v2 directory (one folder per word)")
    words = sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))
    )
    if not words:
        raise DatasetError(f"{root} has no word folders; expected e.g. {root}/yes/*.wav")
    label_of = {w: i for i, w in enumerate(words)}
    val = _read_list(root / "validation_list.txt", root, set(words))
    test = _read_list(root / "testing_list.txt", root, set(words))
    every = {f"{w}/{p.name}" for w in words for p in sorted((root / w).glob("*.wav"))}
    for entries, name in ((val, "validation_list.txt"), (test, "testing_list.txt")):
        check_files([Clip(root / e, 0) for e in sorted(entries)], root / name)

    def clips(entries: set[str]) -> list[Clip]:
        return [Clip(root / e, label_of[e.split("/", 1)[0]]) for e in sorted(entries)]

    noise = root / NOISE_DIR
    return DatasetSplits(
        name="speech_commands",
        labels=words,
        train=clips(every - val - test),
        val=clips(val),
        test=clips(test),
        features=FEATURES,
        task="keyword spotting (Speech Commands v2)",
        noise_dir=noise if noise.is_dir() else None,
    )


def folds(opts: DataOptions) -> list[int]:
    """Never returns: raises a :class:`DatasetError` (the official lists fix the test split, so
    there is nothing to cross-validate)."""
    raise DatasetError(f"cannot cross-validate speech_commands: {FIXED}")
