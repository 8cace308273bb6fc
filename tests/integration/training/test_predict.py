"""`lookaside-train predict`: a folder of clips labelled by a trained adapter equals (a) evaluate's
per-clip scores (the training feature path, softmax of the checkpoint's logits in a fresh bank)
and (b) the real service's /classify for the same files, timeline windows included; `--url`
gives the same through the server; CSV and JSONL parse back; bad files and limits are reported;
folders are walked lazily in path order; windows are batched across files, flushed at a byte cap."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from lookaside.backbones import load_backbone
from lookaside.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, load_checkpoint
from lookaside.client import Client
from lookaside.errors import ConfigError
from lookaside.model import MultiAdapterModel
from tests.integration.training.server_support import serve_store
from tests.integration.training.synth_data import KINDS, RATE, synth, write_clip
from training import predict
from training.cache import FeatureCache
from training.cli import main
from training.data import ClipDataset
from training.datasets.base import Clip
from training.export import make_bank

HOP = 64
"""Frames between windows (half of the 128-frame window), so long clips' windows overlap."""


@pytest.fixture(scope="module")
def run(synth_folder: Path, backbone_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch LoAA adapter of the 4 synthetic classes, served windows ``HOP`` frames apart."""
    out = tmp_path_factory.mktemp("predict-runs")
    argv = ["train", "--dataset", "folder", "--data-dir", str(synth_folder)]
    argv += ["--backbone", f"file:{backbone_file}", "--device", "cpu", "--out", str(out)]
    argv += ["--name", "sounds", "--frames", "128", "--window-hop", str(HOP), "--epochs", "1"]
    argv += ["--method", "loaa", "--rank", "4", "--lr", "5e-3", "--no-progress"]
    assert main(argv) == 0
    run_dir = out / "sounds" / "1"
    manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
    assert manifest["features"]["window_hop_frames"] == HOP
    return run_dir


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """New clips in nested folders: one-window clips (one at 44.1 kHz stereo, one shorter than a
    window) and two longer than a window."""
    root = tmp_path_factory.mktemp("new")
    rng = np.random.default_rng(7)
    for kind in KINDS:
        write_clip(root / "short" / f"{kind}.wav", kind, 1.28, rng)
    write_clip(root / "short" / "brief.wav", "chirp", 0.5, rng)
    stereo = np.stack([synth("tone", 1.2, rng), synth("chirp", 1.2, rng)], axis=1)
    t44 = np.interp(
        np.arange(int(1.2 * 44_100)) / 44_100, np.arange(stereo.shape[0]) / RATE, stereo[:, 0]
    )
    sf.write(root / "short" / "stereo.flac", np.stack([t44, t44 * 0.5], axis=1), 44_100)
    write_clip(root / "long" / "a.wav", "noise", 3.3, rng)
    write_clip(root / "long" / "deeper" / "b.flac", "clicks", 2.0, rng)
    (root / "long" / "notes.txt").write_text("not audio: skipped in folders")
    return root


@pytest.fixture(scope="module")
def server(
    run: Path, backbone_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The real service with the run's checkpoint in its store."""
    store = tmp_path_factory.mktemp("store")
    (store / "sounds" / "1").mkdir(parents=True)
    for name in (MANIFEST_FILE, WEIGHTS_FILE):
        shutil.copy(run / name, store / "sounds" / "1" / name)
    (store / "sounds" / "LAST").write_text("1\n")
    (store / "sounds" / "ACTIVE").write_text("1\n")
    with serve_store(backbone_file, store) as url:
        yield url


def _predict(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["predict", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _jsonl(text: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {Path(r["path"]).name: r for r in rows}


def _reference(run: Path, backbone_file: Path, path: Path) -> dict[str, float]:
    """Evaluate's per-clip scores: the training feature path (ClipDataset, no cache) and the
    softmax of the logits of the checkpoint loaded into a fresh bank, with plain torch."""
    backbone = load_backbone(f"file:{backbone_file}").eval()
    ckpt = load_checkpoint(run, backbone=backbone)
    bank = make_bank(backbone, trainable=False)
    adapter_id = ckpt.load_into(bank)
    cfg = ckpt.manifest.features
    x, _ = ClipDataset([Clip(path, 0)], cfg, FeatureCache(None, cfg))[0]
    with torch.inference_mode():
        logits = MultiAdapterModel(backbone, bank).logits(x[None], adapter_id)[0]
    probs = torch.softmax(logits.double(), dim=-1)
    return dict(zip(ckpt.manifest.labels, probs.tolist(), strict=True))


def test_predict_equals_evaluates_per_clip_scores(
    run: Path, clips: Path, backbone_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _predict([str(run.parent), str(clips / "short"), "--device", "cpu"], capsys)
    assert code == 0, err
    assert f"using {run} (the highest of the 1 run(s)" in err
    rows = _jsonl(out)
    assert sorted(rows) == sorted(["brief.wav", "stereo.flac", *(f"{k}.wav" for k in KINDS)])
    for name, row in rows.items():
        assert row["error"] is None
        assert len(row["top_k"]) == 4  # --top-k 5, bounded by the 4 labels
        want = _reference(run, backbone_file, clips / "short" / name)
        got = {e["label"]: e["score"] for e in row["top_k"]}
        assert got == pytest.approx(want, abs=1e-5), name
        assert [e["label"] for e in row["top_k"]] == sorted(want, key=lambda k: -want[k])


def test_predict_equals_the_services_classify(
    run: Path, clips: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _predict([str(run), str(clips), "--timeline", "--device", "cpu"], capsys)
    assert code == 0, err
    rows = _jsonl(out)
    assert "notes.txt" not in rows
    assert {"a.wav", "b.flac"} <= set(rows)
    long_windows = 0
    with Client(server) as client:
        for row in rows.values():
            answer = client.classify(Path(row["path"]), "sounds", top_k=4)
            (result,) = answer.results
            assert row["duration_s"] == pytest.approx(answer.duration_s, abs=1e-6)
            served = {s.label: s.score for s in result.labels}
            assert {e["label"]: e["score"] for e in row["top_k"]} == pytest.approx(served, abs=1e-5)
            windows = result.timeline or []
            assert len(row["timeline"]) == max(1, len(windows))
            for mine, theirs in zip(row["timeline"], windows, strict=False):
                assert (mine["start_s"], mine["end_s"]) == pytest.approx(
                    (theirs.start_s, theirs.end_s)
                )
                served_w = {s.label: s.score for s in theirs.labels}
                assert {e["label"]: e["score"] for e in mine["top_k"]} == pytest.approx(
                    served_w, abs=1e-5
                )
            long_windows += len(windows)
    # a.wav: 3.3 s = 330 frames -> windows at 0, 64, ..., 256 (5); b.flac: 200 frames -> 3
    assert [w["start_s"] for w in rows["a.wav"]["timeline"]] == pytest.approx(
        [0, 0.64, 1.28, 1.92, 2.56]
    )
    assert rows["a.wav"]["timeline"][-1]["end_s"] == pytest.approx(3.3)
    assert long_windows == 8


def test_predict_through_the_server_gives_the_same_top_k(
    run: Path, clips: Path, server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = tmp_path / "local.jsonl"
    remote = tmp_path / "remote.jsonl"
    assert (
        _predict(
            [str(run), str(clips), "--top-k", "2", "--out", str(local), "--device", "cpu"], capsys
        )[0]
        == 0
    )
    code, _, err = _predict(
        [str(run), str(clips), "--top-k", "2", "--out", str(remote), "--url", server], capsys
    )
    assert code == 0, err
    mine, theirs = _jsonl(local.read_text()), _jsonl(remote.read_text())
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        a, b = mine[name]["top_k"], theirs[name]["top_k"]
        assert [e["label"] for e in a] == [e["label"] for e in b], name
        assert [e["score"] for e in a] == pytest.approx([e["score"] for e in b], abs=1e-5)
    code, _, err = _predict([str(run), str(clips), "--url", server, "--adapter", "nope"], capsys)
    assert code == 1
    assert f"{len(mine)} of {len(mine)} file(s) failed" in err


def test_csv_and_jsonl_parse_back_and_a_corrupt_file_is_an_error_row(
    run: Path, clips: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "in" / "broken.wav"
    bad.parent.mkdir()
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    good = clips / "short" / "tone.wav"
    args = [str(run), str(good), str(bad.parent), "--device", "cpu", "--top-k", "3"]
    code, _, err = _predict([*args, "--out", str(tmp_path / "p.csv")], capsys)
    assert code == 1
    assert "error: 1 of 2 file(s) failed" in err
    with (tmp_path / "p.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["path", "duration_s"] + [
        f"{c}_{i}" for i in (1, 2, 3) for c in ("label", "score")
    ] + ["error"]
    assert [Path(r["path"]).name for r in table] == ["tone.wav", "broken.wav"]
    assert table[1]["error"]
    assert table[1]["label_1"] == ""
    assert table[0]["error"] == ""
    code, _, _ = _predict([*args, "--out", str(tmp_path / "p.jsonl")], capsys)
    assert code == 1
    rows = _jsonl((tmp_path / "p.jsonl").read_text())
    assert rows["broken.wav"]["error"]
    assert rows["broken.wav"]["top_k"] == []
    for i, entry in enumerate(rows["tone.wav"]["top_k"]):
        assert (table[0][f"label_{i + 1}"], float(table[0][f"score_{i + 1}"])) == (
            entry["label"],
            entry["score"],
        )
    assert float(table[0]["duration_s"]) == rows["tone.wav"]["duration_s"] == 1.28


def test_limits_and_bad_arguments_are_refused(
    run: Path, clips: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _predict([str(run), str(clips), "--max-files", "3"], capsys)
    assert code == 2
    assert "more than 3 files to predict" in err
    assert out == ""
    code, _, err = _predict([str(run), str(tmp_path / "missing")], capsys)
    assert code == 2
    assert "is neither a file nor a folder" in err
    code, _, err = _predict([str(run), str(clips), "--out", str(tmp_path / "p.txt")], capsys)
    assert code == 2
    assert "name a .csv or .jsonl file" in err
    code, _, err = _predict(
        [str(run), str(clips), "--out", str(tmp_path / "p.csv"), "--timeline"], capsys
    )
    assert code == 2
    assert "--timeline needs JSONL" in err
    code, _, err = _predict([str(tmp_path), str(clips)], capsys)
    assert code == 2
    assert "is not a checkpoint" in err
    code, out, _ = _predict(
        [str(run), str(clips / "long" / "a.wav"), "--max-windows", "4", "--device", "cpu"], capsys
    )
    assert code == 1
    assert "5 windows, over the limit of 4" in json.loads(out)["error"]
    code, out, _ = _predict(
        [str(run), str(clips / "long" / "a.wav"), "--max-seconds", "2", "--device", "cpu"], capsys
    )
    assert code == 1
    assert json.loads(out)["error"]


def test_evaluate_predictions_equal_predict_on_the_same_clips(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scored = tmp_path / "val.jsonl"
    capsys.readouterr()
    argv = ["evaluate", str(run), "--split", "val", "--predictions", str(scored)]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 0
    evaluated = [json.loads(line) for line in scored.read_text().splitlines()]
    paths = [row["path"] for row in evaluated]
    assert len(paths) == len(set(paths)) >= 4
    code, out, err = _predict([str(run), *paths, "--device", "cpu"], capsys)
    assert code == 0, err
    predicted = [json.loads(line) for line in out.splitlines()]
    assert [row["path"] for row in predicted] == paths
    for mine, theirs in zip(predicted, evaluated, strict=True):
        assert len(theirs["top_k"]) == len(KINDS)  # every label
        want = {e["label"]: e["score"] for e in theirs["top_k"]}
        assert {e["label"]: e["score"] for e in mine["top_k"]} == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize(
    "flag", ["--top-k", "--batch-size", "--max-files", "--max-windows", "--max-seconds"]
)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_non_positive_numbers_are_refused(
    run: Path, clips: Path, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _predict([str(run), str(clips), flag, value], capsys)
    assert code == 2
    assert f"{flag} must be greater than 0 (got {value})" in err
    assert out == ""


def test_folders_are_walked_lazily_in_path_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("b.wav", "a/z.wav", "a/y/x.flac", "c.mp3", "d/e.wav", "d/skip.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    want = [p for p in sorted(tmp_path.rglob("*")) if p.suffix in (".wav", ".flac", ".mp3")]
    assert predict.collect_files([tmp_path], 10) == want
    listed: list[Path] = []
    real = predict._entries

    def counting(folder: Path) -> Any:
        listed.append(folder)
        return real(folder)

    monkeypatch.setattr(predict, "_entries", counting)
    with pytest.raises(ConfigError, match="more than 2 files to predict"):
        predict.collect_files([tmp_path], 2)
    assert listed == [tmp_path, tmp_path / "a", tmp_path / "a" / "y"]  # d/ is never listed


def _library(run: Path, backbone_file: Path, batch_size: int) -> predict.LibraryScorer:
    return predict.LibraryScorer(
        load_checkpoint(run),
        backbone=f"file:{backbone_file}",
        device=torch.device("cpu"),
        batch_size=batch_size,
        top_k=4,
        timeline=True,
        limits=predict.Limits(),
    )


def test_windows_are_batched_across_files_and_flushed_at_the_byte_cap(
    run: Path, clips: Path, backbone_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = predict.collect_files([clips], 100)
    whole = list(_library(run, backbone_file, 1000).predict(files))
    scorer = _library(run, backbone_file, 3)  # batches cut across files' windows
    cut = list(scorer.predict(files))
    assert [p.path for p in cut] == [p.path for p in whole]
    for a, b in zip(cut, whole, strict=True):
        assert [x for x, _ in a.top_k] == [x for x, _ in b.top_k]
        assert [s for _, s in a.top_k] == pytest.approx([s for _, s in b.top_k], abs=1e-6)
        assert len(a.timeline or []) == len(b.timeline or [])
    # a byte cap below one file's features: each file is scored before the next is decoded
    events: list[str] = []
    real = scorer.featurize

    def featurize(path: Path) -> Any:
        events.append(f"decode {path.name}")
        return real(path)

    monkeypatch.setattr(scorer, "featurize", featurize)
    monkeypatch.setattr(scorer, "batch_size", 1000)
    monkeypatch.setattr(predict, "MAX_QUEUED_BYTES", 1)
    for p in scorer.predict(files[:3]):
        events.append(f"out {Path(p.path).name}")
    names = [f.name for f in files[:3]]
    assert events == [e for n in names for e in (f"decode {n}", f"out {n}")]
