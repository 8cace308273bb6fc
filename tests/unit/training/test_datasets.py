"""Dataset index parsing: stratified split, generic layouts, errors naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.datasets import DataOptions, DatasetError, load_dataset
from training.datasets.base import first_few, stratified_split
from training.datasets.epic_sounds import timestamp_seconds


def test_stratified_split_is_seeded_and_per_class() -> None:
    items = [(f"{c}{i}", c) for c in range(3) for i in range(10)]
    a = stratified_split(items, {"val": 0.2}, seed=1)
    assert a == stratified_split(items, {"val": 0.2}, seed=1)
    assert a != stratified_split(items, {"val": 0.2}, seed=2)
    assert sorted(int(k[0]) for k in a["val"]) == [0, 0, 1, 1, 2, 2]
    assert len(a["train"]) == 24


def test_folder_layout_needs_audio_in_every_label(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.wav").write_bytes(b"")
    (tmp_path / "b").mkdir()
    with pytest.raises(DatasetError, match=r"/b holds no audio"):
        load_dataset("folder", DataOptions(tmp_path))


def test_csv_errors_name_file_and_line(tmp_path: Path) -> None:
    index = tmp_path / "clips.csv"
    index.write_text("path,label,split\nx.wav,a,training\n")
    with pytest.raises(DatasetError, match=r"clips\.csv line 2: split 'training'"):
        load_dataset("csv", DataOptions(index))
    index.write_text("file,label\nx.wav,a\n")
    with pytest.raises(DatasetError, match=r"clips\.csv lacks columns \['path'\]"):
        load_dataset("csv", DataOptions(index))
    with pytest.raises(DatasetError, match=r"missing\.csv is missing; expected a CSV"):
        load_dataset("csv", DataOptions(tmp_path / "missing.csv"))


def test_speech_commands_list_entries_are_checked(tmp_path: Path) -> None:
    (tmp_path / "yes").mkdir()
    (tmp_path / "validation_list.txt").write_text("nope/1.wav\n")
    (tmp_path / "testing_list.txt").write_text("")
    with pytest.raises(DatasetError, match=r"validation_list\.txt line 1: 'nope/1\.wav'"):
        load_dataset("speech_commands", DataOptions(tmp_path))


def test_epic_needs_audio(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no EPIC-KITCHENS audio.*--audio"):
        load_dataset("epic_sounds", DataOptions(tmp_path))


def test_timestamps() -> None:
    assert timestamp_seconds("00:01:02.500") == pytest.approx(62.5)
    assert timestamp_seconds("3.25") == pytest.approx(3.25)


def test_first_few_names_five_and_counts_the_rest() -> None:
    names = [f"f{i}.wav" for i in range(7)]
    assert first_few(names) == "f0.wav, f1.wav, f2.wav, f3.wav, f4.wav and 2 more"
    assert first_few(names[:5]) == "f0.wav, f1.wav, f2.wav, f3.wav, f4.wav"
