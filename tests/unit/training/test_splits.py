"""Drawn splits: grouped, stratified K-folds and shares, --group-by forms and defaults, --fold on
every layout, ESC-10 (indexes only: loaders check that files exist, they never read audio)."""

from __future__ import annotations

import csv
import random
from collections import Counter
from pathlib import Path

import pytest

from training.datasets import DataOptions, DatasetError, cv_folds, load_dataset
from training.datasets.base import (
    DatasetSplits,
    group_kfold,
    group_split,
    stratified_split,
    write_split_csv,
)


def _items(seed: int = 0) -> list[tuple[str, int, str]]:
    """30 speakers, each with 1-4 clips of each of 3 labels (unequal groups)."""
    rng = random.Random(seed)
    return [
        (f"s{s}-l{lab}-{i}", lab, f"s{s}")
        for s in range(30)
        for lab in range(3)
        for i in range(rng.randint(1, 4))
    ]


def test_grouped_kfold_keeps_groups_whole_and_labels_balanced() -> None:
    items = _items()
    folds = group_kfold(items, 5, seed=3, fix="")
    keys = [k for fold in folds for k in fold]
    assert sorted(keys) == sorted(k for k, _, _ in items)  # every clip in exactly one test fold
    group_of = {k: g for k, _, g in items}
    fold_groups = [{group_of[k] for k in fold} for fold in folds]
    assert all(not a & b for i, a in enumerate(fold_groups) for b in fold_groups[i + 1 :])
    # Per label, each fold holds a fifth of the clips within one group's worth (at most 4).
    label_of = {k: lab for k, lab, _ in items}
    total = Counter(lab for _, lab, _ in items)
    for fold in folds:
        have = Counter(label_of[k] for k in fold)
        for lab, n in total.items():
            assert abs(have[lab] - n / 5) <= 4, (lab, have[lab], n / 5)
    assert folds == group_kfold(items, 5, seed=3, fix="")
    assert folds != group_kfold(items, 5, seed=4, fix="")


def test_grouped_split_shares_and_ungrouped_split_is_the_old_one() -> None:
    items = _items(1)
    drawn = group_split(items, {"val": 0.2, "test": 0.2}, seed=0, fix="")
    group_of = {k: g for k, _, g in items}
    groups = {s: {group_of[k] for k in keys} for s, keys in drawn.items()}
    assert not groups["train"] & groups["val"]
    assert not groups["val"] & groups["test"]
    assert not groups["train"] & groups["test"]
    assert abs(len(drawn["val"]) - 0.2 * len(items)) <= 12  # within one group's clips
    single = [(f"k{i}", i % 3, f"k{i}") for i in range(30)]
    assert group_split(single, {"val": 0.2}, seed=5, fix="") == stratified_split(
        [(k, lab) for k, lab, _ in single], {"val": 0.2}, seed=5
    )


def test_too_few_groups_say_how_many_and_what_to_change() -> None:
    items = [(f"k{i}", i % 2, f"g{i % 3}") for i in range(12)]
    with pytest.raises(DatasetError, match=r"3 groups cannot fill 5 disjoint splits.*lower it"):
        group_kfold(items, 5, seed=0, fix="lower it")


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def _speakers(root: Path, extra: str = "speaker", n: int = 8) -> Path:
    """``n`` speakers x 2 labels x 2 clips, under <root>/<speaker>/...; a speaker column."""
    rows: list[list[object]] = []
    for s in range(n):
        for lab in ("yes", "no"):
            for i in range(2):
                rel = f"spk{s}/{lab}_{i}.wav"
                _touch(root / rel)
                rows.append([rel, lab, f"spk{s}"])
    return _csv(root / "clips.csv", ["path", "label", extra], rows)


def _groups_of(splits: DatasetSplits, name: str) -> set[str]:
    return {c.path.parent.name for c in splits.split(name)}


def test_csv_speaker_column_is_the_default_group(tmp_path: Path) -> None:
    index = _speakers(tmp_path)
    splits = load_dataset("csv", DataOptions(index, val_fraction=0.25, test_fraction=0.25))
    sets = [_groups_of(splits, s) for s in ("train", "val", "test")]
    assert all(sets)
    assert not sets[0] & sets[1]
    assert not sets[0] & sets[2]
    assert not sets[1] & sets[2]
    assert splits.scheme["group_key"] == "column speaker"
    assert splits.split_rows is not None
    assert len(splits.split_rows[0]) == 6
    # --group-by none: by label only, the old split exactly
    plain = load_dataset("csv", DataOptions(index, val_fraction=0.25, group_by="none"))
    old = stratified_split(
        [(f"{c.path}#None-None", c.label) for c in plain.train + plain.val], {"val": 0.25}, 0
    )
    assert sorted(str(c.path) for c in plain.val) == sorted(k[:-10] for k in old["val"])


def test_group_by_column_and_regex_forms(tmp_path: Path) -> None:
    index = _speakers(tmp_path, extra="session")  # not 'speaker': no default column
    assert load_dataset("csv", DataOptions(index)).scheme["group_key"] == "none"
    by_col = load_dataset("csv", DataOptions(index, group_by="session", val_fraction=0.25))
    by_group = load_dataset("csv", DataOptions(index, group_by=r"^(spk\d+)/", val_fraction=0.25))
    by_match = load_dataset("csv", DataOptions(index, group_by=r"spk\d+", val_fraction=0.25))
    for splits in (by_col, by_group, by_match):
        assert not _groups_of(splits, "train") & _groups_of(splits, "val")
    assert by_group.scheme["group_key"] == r"regex ^(spk\d+)/"
    assert [c.path for c in by_group.val] == [c.path for c in by_match.val]  # same groups
    with pytest.raises(DatasetError, match=r"matches no group in 32 clips: spk0/yes_0\.wav, "):
        load_dataset("csv", DataOptions(index, group_by=r"^(nobody)"))
    with pytest.raises(DatasetError, match=r"not a column of the index .* not a valid one"):
        load_dataset("csv", DataOptions(index, group_by="spk(\\d"))


def test_speech_commands_names_group_a_folder_by_speaker(tmp_path: Path) -> None:
    for s in range(6):
        for word in ("yes", "no"):
            _touch(tmp_path / word / f"{s:08x}_nohash_0.wav")
            _touch(tmp_path / word / f"{s:08x}_nohash_1.wav")
    splits = load_dataset("folder", DataOptions(tmp_path, val_fraction=0.3))
    assert splits.scheme["group_key"] == "speaker hash of Speech Commands file names"
    speakers = {s: {c.path.name[:8] for c in splits.split(s)} for s in ("train", "val")}
    assert speakers["val"]
    assert not speakers["train"] & speakers["val"]
    _touch(tmp_path / "yes" / "other.wav")  # one name that is not SC-style: no default groups
    assert load_dataset("folder", DataOptions(tmp_path)).scheme["group_key"] == "none"


def test_fold_on_a_csv_is_a_drawn_grouped_kfold(tmp_path: Path) -> None:
    index = _speakers(tmp_path)
    assert cv_folds("csv", DataOptions(index, num_folds=4)) == [1, 2, 3, 4]
    tests = [
        load_dataset("csv", DataOptions(index, fold=k, num_folds=4, val_fraction=0.2))
        for k in (1, 2, 3, 4)
    ]
    paths = [c.path for s in tests for c in s.test]
    assert len(paths) == len(set(paths)) == 32  # every clip in exactly one test fold
    for s in tests:
        assert s.scheme["scheme"] == "drawn K-fold"
        assert s.scheme["k"] == 4
        assert not _groups_of(s, "test") & (_groups_of(s, "train") | _groups_of(s, "val"))
        assert _groups_of(s, "val")
        assert not _groups_of(s, "val") & _groups_of(s, "train")
    with pytest.raises(DatasetError, match=r"--fold 5 is not a fold of the 4-fold"):
        load_dataset("csv", DataOptions(index, fold=5, num_folds=4))
    with pytest.raises(DatasetError, match=r"--test-fraction 0.2 would draw a second test"):
        load_dataset("csv", DataOptions(index, fold=1, test_fraction=0.2))
    with pytest.raises(DatasetError, match=r"8 groups cannot fill 10 .*\(at most 8\)"):
        load_dataset("csv", DataOptions(index, fold=1, num_folds=10))


def test_csv_fold_column_gives_its_own_folds(tmp_path: Path) -> None:
    rows: list[list[object]] = []
    for i in range(12):
        rows.append([_touch(tmp_path / f"c{i}.wav").name, "ab"[i % 2], 1 + i % 3])
    index = _csv(tmp_path / "folds.csv", ["path", "label", "fold"], rows)
    assert cv_folds("csv", DataOptions(index)) == [1, 2, 3]
    splits = load_dataset("csv", DataOptions(index, fold=2, val_fraction=0.2))
    assert sorted(c.path.name for c in splits.test) == ["c1.wav", "c10.wav", "c4.wav", "c7.wav"]
    assert splits.scheme["scheme"] == "dataset folds"
    with pytest.raises(DatasetError, match=r"has folds \[1, 2, 3\]; --fold 4 is not one"):
        load_dataset("csv", DataOptions(index, fold=4))
    # --num-folds sizes a drawn K-fold: refused on own folds, even at the default K or their own
    for k in (4, 5, 3):
        with pytest.raises(DatasetError, match=rf"its own 3 folds; drop --num-folds {k}"):
            load_dataset("csv", DataOptions(index, fold=2, num_folds=k))
        with pytest.raises(DatasetError, match=rf"its own 3 folds; drop --num-folds {k}"):
            cv_folds("csv", DataOptions(index, num_folds=k))


def test_num_folds_needs_a_drawn_fold(tmp_path: Path) -> None:
    index = _speakers(tmp_path)
    for k in (3, 5):
        with pytest.raises(DatasetError, match=rf"--num-folds {k} needs --fold k .*crossval"):
            load_dataset("csv", DataOptions(index, num_folds=k))
    assert load_dataset("csv", DataOptions(index, fold=2)).scheme["k"] == 5  # not given: 5
    assert cv_folds("csv", DataOptions(index)) == [1, 2, 3, 4, 5]
    assert cv_folds("folder", DataOptions(tmp_path, num_folds=3)) == [1, 2, 3]


def test_fixed_splits_refuse_fold_and_group_by(tmp_path: Path) -> None:
    split_csv = _csv(
        tmp_path / "s.csv",
        ["path", "label", "split"],
        [[_touch(tmp_path / "a.wav").name, "a", "train"], ["a.wav", "b", "val"]],
    )
    with pytest.raises(DatasetError, match=r"--fold 2 cannot apply: .*s\.csv gives the split"):
        load_dataset("csv", DataOptions(split_csv, fold=2))
    with pytest.raises(DatasetError, match=r"cannot cross-validate .*s\.csv: its split column"):
        cv_folds("csv", DataOptions(split_csv))
    fixed = {
        "speech_commands": "testing_list.txt",
        "epic_sounds": "EPIC_Sounds_validation.csv",
        "ave": "testSet.txt",
    }
    for name, listing in fixed.items():
        with pytest.raises(DatasetError, match=rf"--fold 1 cannot apply: .*{listing}"):
            load_dataset(name, DataOptions(tmp_path, fold=1))
        with pytest.raises(DatasetError, match=rf"--num-folds 5 cannot apply: .*{listing}"):
            load_dataset(name, DataOptions(tmp_path, num_folds=5))
        with pytest.raises(DatasetError, match=rf"cannot cross-validate {name}: .*{listing}"):
            cv_folds(name, DataOptions(tmp_path))
    with pytest.raises(DatasetError, match=r"--group-by speaker cannot apply: Speech Commands"):
        load_dataset("speech_commands", DataOptions(tmp_path, group_by="speaker"))


def test_speech_commands_names_the_list_of_a_missing_file(tmp_path: Path) -> None:
    _touch(tmp_path / "yes" / "00000000_nohash_0.wav")
    (tmp_path / "validation_list.txt").write_text("yes/00000000_nohash_0.wav\n")
    (tmp_path / "testing_list.txt").write_text("yes/0000000f_nohash_0.wav\n")
    with pytest.raises(DatasetError, match=r"testing_list\.txt lists 1 audio files .*0000000f"):
        load_dataset("speech_commands", DataOptions(tmp_path))


ESC_HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]


def _esc50(root: Path, targets: dict[int, str], esc10: set[int]) -> None:
    """Per target and fold: two takes (A, B) of one source recording."""
    rows: list[list[object]] = []
    for target, category in targets.items():
        for fold in range(1, 6):
            src = 1000 * target + fold
            for take in "AB":
                name = f"{fold}-{src}-{take}-{target}.wav"
                _touch(root / "audio" / name)
                rows.append([name, fold, target, category, target in esc10, src, take])
    _csv(root / "meta" / "esc50.csv", ESC_HEADER, rows)


def test_esc50_validation_keeps_source_recordings_together(tmp_path: Path) -> None:
    _esc50(tmp_path, {0: "dog", 1: "rooster", 2: "pig"}, set())
    splits = load_dataset("esc50", DataOptions(tmp_path, fold=3, val_fraction=0.25))
    assert splits.scheme["group_key"] == "column src_file"
    src = {s: {c.path.name.split("-")[1] for c in splits.split(s)} for s in ("train", "val")}
    assert src["val"]
    assert not src["train"] & src["val"]
    assert all(c.path.name.startswith("3-") for c in splits.test)
    assert len(splits.test) == 6
    for k in (4, 5):
        refusal = rf"ESC-50 has its own 5 folds; drop --num-folds {k}"
        with pytest.raises(DatasetError, match=refusal):
            load_dataset("esc50", DataOptions(tmp_path, num_folds=k))
        with pytest.raises(DatasetError, match=refusal):
            cv_folds("esc50", DataOptions(tmp_path, num_folds=k))
    with pytest.raises(DatasetError, match=r"has folds \[1, 2, 3, 4, 5\]; --fold 6 is not"):
        load_dataset("esc50", DataOptions(tmp_path, fold=6))


def test_esc10_is_the_marked_rows_reindexed(tmp_path: Path) -> None:
    _esc50(
        tmp_path, {0: "dog", 1: "rooster", 2: "pig", 10: "rain", 38: "clock_tick"}, {0, 1, 10, 38}
    )
    splits = load_dataset("esc10", DataOptions(tmp_path, fold=2))
    assert splits.labels == ["dog", "rooster", "rain", "clock_tick"]
    assert sorted({c.label for c in splits.train}) == [0, 1, 2, 3]
    rain = next(c for c in splits.test if c.path.name.endswith("-10.wav"))
    assert rain.label == 2
    assert len(splits.test) == 8
    assert cv_folds("esc10", DataOptions(tmp_path)) == [1, 2, 3, 4, 5]
    # messages name the dataset loaded, ESC-10, not ESC-50
    with pytest.raises(DatasetError, match=r"^ESC-10 has folds \[1, 2, 3, 4, 5\]; --fold 6"):
        load_dataset("esc10", DataOptions(tmp_path, fold=6))
    with pytest.raises(DatasetError, match=r"^ESC-10 has its own 5 folds; drop --num-folds 3"):
        load_dataset("esc10", DataOptions(tmp_path, num_folds=3))
    with pytest.raises(DatasetError, match=r"^ESC-10 has its own 5 folds; drop --num-folds 3"):
        cv_folds("esc10", DataOptions(tmp_path, num_folds=3))
    index = tmp_path / "meta" / "esc50.csv"
    rows = [r for r in csv.reader(index.read_text().splitlines()) if r[4] != "False"]
    _csv(index, ESC_HEADER, rows[1:])  # only ESC-10's rows: ESC-50 refuses and names esc10
    with pytest.raises(DatasetError, match=r"found \[0, 1, 10, 38\] .*--dataset esc10"):
        load_dataset("esc50", DataOptions(tmp_path))


def test_split_csv_reads_back_as_the_same_grouped_split(tmp_path: Path) -> None:
    index = _speakers(tmp_path / "data")
    first = load_dataset("csv", DataOptions(index, val_fraction=0.25, test_fraction=0.25, seed=7))
    write_split_csv(first.split_rows, tmp_path / "split.csv")
    header = (tmp_path / "split.csv").read_text().splitlines()[0]
    assert header == "path,label,start_s,end_s,split,group"
    again = load_dataset("csv", DataOptions(tmp_path / "split.csv"))
    for s in ("train", "val", "test"):
        assert [c.path for c in again.split(s)] == [c.path for c in first.split(s)]


def test_segments_of_one_file_stay_in_one_split_by_default(tmp_path: Path) -> None:
    rows = []
    for lab, kind in enumerate(("tone", "noise")):
        for f in range(6):
            rel = f"{kind}{f}.wav"
            (tmp_path / rel).write_bytes(b"")  # the index is read, not the audio
            rows += [[rel, f"l{lab}", f"{s * 0.5}", f"{s * 0.5 + 0.5}"] for s in range(4)]
    index = _csv(tmp_path / "segments.csv", ["path", "label", "start_s", "end_s"], rows)
    splits = load_dataset("csv", DataOptions(index, val_fraction=0.3, test_fraction=0.3))
    assert splits.scheme["group_key"] == "source file (its segments together)"
    files = [{c.path for c in splits.split(s)} for s in ("train", "val", "test")]
    assert all(files)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not files[a] & files[b]
    # by label only, 24 segments per label spread over every split: files straddle splits
    plain = load_dataset(
        "csv", DataOptions(index, val_fraction=0.3, test_fraction=0.3, group_by="none")
    )
    straddle = [{c.path for c in plain.split(s)} for s in ("train", "val")]
    assert straddle[0] & straddle[1]
