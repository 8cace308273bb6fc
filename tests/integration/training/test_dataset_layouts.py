"""Each loader on a fake of its exact public layout, end to end through `train` (one epoch)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from lookaside.checkpoint import load_checkpoint
from tests.integration.training.synth_data import FAST_TRAIN, RATE, synth, write_clip
from training.cli import main
from training.datasets import DataOptions, DatasetError, load_dataset


def _train(root: Path, dataset: str, out: Path, backbone: Path, *extra: str) -> dict[str, object]:
    rc = main(
        [
            "train",
            "--dataset",
            dataset,
            "--data-dir",
            str(root),
            "--out",
            str(out),
            "--backbone",
            f"file:{backbone}",
            "--name",
            "t",
            *FAST_TRAIN,
            *extra,
        ]
    )
    assert rc == 0
    return json.loads((out / "t" / "1" / "metrics.json").read_text())


def fake_esc50(root: Path) -> None:
    rng = np.random.default_rng(1)
    rows = []
    for target, category in enumerate(("dog", "rain", "clock_tick")):
        kind = ("tone", "noise", "clicks")[target]
        for fold in range(1, 6):
            name = f"{fold}-{100 + target}-A-{target}.wav"
            write_clip(root / "audio" / name, kind, 5.0, rng)
            rows.append([name, fold, target, category, "False", 100 + target, "A"])
    (root / "meta").mkdir()
    with (root / "meta" / "esc50.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)


def test_esc50(tmp_path: Path, backbone_file: Path) -> None:
    fake_esc50(tmp_path / "ESC-50")
    splits = load_dataset("esc50", DataOptions(tmp_path / "ESC-50", fold=2))
    assert splits.labels == ["dog", "rain", "clock_tick"]
    assert all(c.path.name.startswith("2-") for c in splits.test)
    assert len(splits.test) == 3
    assert not {c.path for c in splits.val} & {c.path for c in splits.test}
    assert splits.features.target_frames == 512
    report = _train(tmp_path / "ESC-50", "esc50", tmp_path / "out", backbone_file, "--fold", "2")
    assert report["eval_split"] == "test"
    manifest = load_checkpoint(tmp_path / "out" / "t" / "1").manifest
    assert manifest.labels == ["dog", "rain", "clock_tick"]


def test_crossval_over_two_folds(
    tmp_path: Path, backbone_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_esc50(tmp_path / "ESC-50")
    rc = main(
        [
            "crossval",
            "--folds",
            "1,3",
            "--dataset",
            "esc50",
            "--data-dir",
            str(tmp_path / "ESC-50"),
            "--out",
            str(tmp_path / "out"),
            "--backbone",
            f"file:{backbone_file}",
            *FAST_TRAIN,
        ]
    )
    assert rc == 0
    scores = [
        load_checkpoint(tmp_path / "out" / f"esc50-fold{k}" / "1").manifest.metrics["test_accuracy"]
        for k in (1, 3)
    ]
    out = capsys.readouterr().out
    assert f"mean top-1 over 2 folds: {100 * sum(scores) / 2:.2f} %" in out


def test_methods_lists_every_method_with_its_share(
    backbone_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lookaside.adapters import ADAPTERS

    assert main(["methods", "--backbone", f"file:{backbone_file}", "--num-classes", "4"]) == 0
    out = capsys.readouterr().out
    for name in ADAPTERS:
        assert f"\n{name} " in out
    assert "--kernels" in out
    assert "% of backbone" in out


def test_esc50_malformed_csv_names_the_file(tmp_path: Path) -> None:
    fake_esc50(tmp_path / "ESC-50")
    index = tmp_path / "ESC-50" / "meta" / "esc50.csv"
    index.write_text("filename,fold,category\nx.wav,1,dog\n")
    with pytest.raises(DatasetError, match=r"esc50\.csv lacks columns \['target'"):
        load_dataset("esc50", DataOptions(tmp_path / "ESC-50"))
    (tmp_path / "ESC-50" / "audio" / "1-100-A-0.wav").unlink()
    fake = tmp_path / "ESC-50" / "meta" / "esc50.csv"
    fake.write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-100-A-0.wav,1,0,dog,False,100,A\n1-101-A-1.wav,1,1,rain,False,101,A\n"
    )
    with pytest.raises(DatasetError, match=r"lists 1 audio files that do not exist: .*1-100-A-0"):
        load_dataset("esc50", DataOptions(tmp_path / "ESC-50"))


def test_speech_commands_with_background_noise(tmp_path: Path, backbone_file: Path) -> None:
    root = tmp_path / "speech_commands_v0.02"
    rng = np.random.default_rng(2)
    lists: dict[str, list[str]] = {"validation_list.txt": [], "testing_list.txt": []}
    for word, kind in (("yes", "tone"), ("no", "chirp"), ("up", "clicks")):
        for i in range(4):
            write_clip(root / word / f"{i:08x}_nohash_0.wav", kind, 0.7 + 0.1 * i, rng)  # short
        lists["validation_list.txt"].append(f"{word}/00000000_nohash_0.wav")
        lists["testing_list.txt"].append(f"{word}/00000001_nohash_0.wav")
    for name, entries in lists.items():
        (root / name).write_text("\n".join(entries) + "\n")
    write_clip(root / "_background_noise_" / "white_noise.wav", "noise", 3.0, rng)
    splits = load_dataset("speech_commands", DataOptions(root))
    assert splits.labels == ["no", "up", "yes"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 3, 3)
    assert splits.noise_dir == root / "_background_noise_"
    # Two DataLoader workers: noise is mixed in the workers, features come from the cache.
    report = _train(root, "speech_commands", tmp_path / "out", backbone_file, "--workers", "2")
    assert report["eval_split"] == "test"


def _epic_csv(path: Path, rows: list[list[object]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
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
            ]
        )
        w.writerows(rows)


@pytest.mark.parametrize("storage", ["hdf5", "files"])
def test_epic_sounds(tmp_path: Path, backbone_file: Path, storage: str) -> None:
    root = tmp_path / "epic"
    root.mkdir()
    rate = 24_000 if storage == "hdf5" else RATE
    rng = np.random.default_rng(3)
    videos = {}
    for v in ("P01_01", "P01_02"):  # each recording: alternating 1 s of the two classes
        videos[v] = np.concatenate([synth(k, 1.0, rng) for k in ("tone", "noise") * 3])
    rows: dict[str, list[list[object]]] = {"train": [], "validation": []}
    for v in videos:
        split = "train" if v == "P01_01" else "validation"
        for i in range(6):
            cls, cid = (("water", 0), ("scrub", 1))[i % 2]
            start = i * 1.0 + 0.1
            stamp = [f"00:00:{start:06.3f}", f"00:00:{start + 0.8:06.3f}"]
            rows[split].append(
                [
                    f"{v}_{i}",
                    "P01",
                    v,
                    *stamp,
                    int(start * rate),
                    int((start + 0.8) * rate),
                    "-",
                    cls,
                    cid,
                ]
            )
    _epic_csv(root / "EPIC_Sounds_train.csv", rows["train"])
    _epic_csv(root / "EPIC_Sounds_validation.csv", rows["validation"])
    if storage == "hdf5":  # raw samples at 24 kHz, one dataset per video (official release)
        with h5py.File(root / "EPIC-KITCHENS-100.hdf5", "w") as f:
            for v, wave16 in videos.items():
                n = int(len(wave16) * rate / RATE)
                f[v] = np.interp(np.arange(n) * RATE / rate, np.arange(len(wave16)), wave16)
    else:
        import soundfile as sf

        (root / "audio").mkdir()
        for v, wave in videos.items():
            sf.write(root / "audio" / f"{v}.wav", wave, RATE)
    splits = load_dataset("epic_sounds", DataOptions(root))
    assert splits.labels == ["water", "scrub"]
    assert len(splits.train) == 6
    report = _train(root, "epic_sounds", tmp_path / "out", backbone_file)
    assert "val_map" in report["metrics"]  # type: ignore[operator]


def test_csv_with_segments_draws_and_writes_a_split(tmp_path: Path, backbone_file: Path) -> None:
    rng = np.random.default_rng(4)
    rows = []
    for label, kind in (("a", "tone"), ("b", "clicks")):
        write_clip(tmp_path / "long" / f"{label}.wav", kind, 4.0, rng)
        rows += [[f"long/{label}.wav", label, i * 0.5, i * 0.5 + 0.6] for i in range(6)]
    index = tmp_path / "clips.csv"
    with index.open("w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "start_s", "end_s"], *rows])
    # One recording per label: by default its segments stay in one split, so no validation
    # split can be drawn, and the error says so; --group-by none splits the segments.
    with pytest.raises(DatasetError, match="group-by none"):
        load_dataset("csv", DataOptions(index, val_fraction=0.3))
    _train(
        index, "csv", tmp_path / "out", backbone_file, "--val-fraction", "0.3", "--group-by", "none"
    )
    written = (tmp_path / "out" / "t" / "1" / "split.csv").read_text().splitlines()
    assert written[0] == "path,label,start_s,end_s,split"
    assert len(written) == 13
    again = load_dataset("csv", DataOptions(tmp_path / "out" / "t" / "1" / "split.csv"))
    first = load_dataset("csv", DataOptions(index, val_fraction=0.3, group_by="none"))
    assert [(c.path, c.start_s) for c in again.val] == [(c.path, c.start_s) for c in first.val]


def test_compute_stats_of_silent_clips_is_refused_before_training(
    tmp_path: Path, backbone_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import soundfile as sf

    for label in ("a", "b"):
        for i in range(4):
            (tmp_path / "clips" / label).mkdir(parents=True, exist_ok=True)
            sf.write(tmp_path / "clips" / label / f"{i}.wav", np.zeros(RATE, np.float32), RATE)
    argv = ["train", "--dataset", "folder", "--data-dir", str(tmp_path / "clips")]
    argv += ["--out", str(tmp_path / "out"), "--backbone", f"file:{backbone_file}", "--name", "t"]
    assert main([*argv, *FAST_TRAIN, "--compute-stats", "--val-fraction", "0.25"]) == 2
    err = capsys.readouterr().err
    assert "--compute-stats measured mean" in err
    assert "features.std=" in err
    assert "max_feature_stat" in err
    assert not (tmp_path / "out" / "t" / "1").exists()  # nothing trained, nothing written
