"""``lookaside-train export RUN --onnx``: one adapter + backbone + fbank, run by onnxruntime alone.

The exported model is run in a separate Python process that imports onnxruntime, numpy and
soundfile only (the test asserts torch was never imported there) on WAV files: the standard
library's own recording of a plucked string, and generated chirps, noise bursts and tones
shorter and longer than the adapter's window. Each must match the library's scores
(``features.extract`` -> ``MultiAdapterModel.logits`` -> softmax / sigmoid) within 1e-4.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.errors import ConfigError
from lookaside.features import FeatureConfig, extract, to_mono_16k
from lookaside.model import MultiAdapterModel
from lookaside.onnx.standalone import KaldiFbank, export_standalone, window_samples
from tests.integration.service.av_support import av_checkpoint, tiny_av
from tests.integration.service.svc_support import make_checkpoint
from training.cli import main

TOL = 1e-4
FEATURES = FeatureConfig(target_frames=128)
PLUCK = Path(sysconfig.get_paths()["stdlib"]) / "test" / "audiodata" / "pluck-pcm32.wav"

RUNNER = """
import json, sys
import numpy as np, onnxruntime as ort, soundfile as sf
model, clips = sys.argv[1], sys.argv[2:]
info = json.load(open(model[:-5] + ".json"))
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
out = {}
for path in clips:
    wave, rate = sf.read(path, dtype="float32")
    assert rate == info["sample_rate"]
    out[path] = session.run([info["output"]], {info["input"]: wave})[0].tolist()
print(json.dumps({"scores": out, "torch": "torch" in sys.modules}))
"""


def _clips(root: Path) -> dict[str, np.ndarray]:
    rate, n = 16_000, window_samples(FEATURES.target_frames)
    rng = np.random.default_rng(0)
    t = np.arange(2 * n) / rate
    chirp = np.sin(2 * np.pi * (300 + 1500 * t) * t).astype(np.float32) * 0.5
    bursts = (rng.standard_normal(n) * (np.arange(n) % 4000 < 800)).astype(np.float32) * 0.3
    tone = np.sin(2 * np.pi * 440 * t[: n // 3]).astype(np.float32) * 0.2
    clips = {"chirp_long": chirp, "bursts_window": bursts, "tone_short": tone + 0.05}
    clips["one_frame"] = rng.standard_normal(400).astype(np.float32) * 0.1
    if PLUCK.exists():
        wave, rate = sf.read(PLUCK, dtype="float32", always_2d=True)
        mono = to_mono_16k(torch.from_numpy(wave.T.copy()), rate)
        clips["pluck_recording"] = mono.numpy()
    for name, wave in clips.items():
        sf.write(root / f"{name}.wav", wave, 16_000, subtype="FLOAT")
    return clips


def _library_scores(
    backbone: VisionTransformer, ckpt: AdapterCheckpoint, wave: np.ndarray
) -> np.ndarray:
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    ckpt.load_into(bank, "ref")
    model = MultiAdapterModel(backbone, bank).eval()
    with torch.inference_mode():
        logits = model.logits(extract(torch.from_numpy(wave), 16_000, FEATURES)[None], "ref")[0]
    if ckpt.manifest.task_type == "multilabel":
        return torch.sigmoid(logits).numpy()
    return torch.softmax(logits, -1).numpy()


@pytest.mark.parametrize(("method", "task_type"), [("loaa", "multiclass"), ("lora", "multilabel")])
def test_exported_model_runs_without_torch_and_matches_the_library(
    tmp_path: Path, tiny_backbone: VisionTransformer, method: str, task_type: str
) -> None:
    ckpt = make_checkpoint(
        tiny_backbone,
        "kws",
        method=method,
        features=FEATURES,
        seed=3,
        task_type=task_type,  # type: ignore[arg-type]
    )
    run = tmp_path / "kws" / "1"
    ckpt.save(run)
    model = tmp_path / "edge" / "kws.onnx"
    assert main(["export", str(run), "--onnx", str(model)]) == 0
    info = json.loads(model.with_suffix(".json").read_text())
    assert info["labels"] == ckpt.manifest.labels
    assert info["multi_label"] == (task_type == "multilabel")
    clips = _clips(tmp_path)
    paths = [str(tmp_path / f"{name}.wav") for name in clips]
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(model), *paths],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["torch"] is False, "the exported model needed torch"
    for name, wave in clips.items():
        got = np.array(result["scores"][str(tmp_path / f"{name}.wav")])
        want = _library_scores(tiny_backbone, ckpt, wave)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= TOL, name
    _shorter_than_a_frame_is_refused(model)


def _shorter_than_a_frame_is_refused(model: Path) -> None:
    """The library refuses < 400 samples (too_short); the model must not answer either."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ok = session.run(None, {"waveform": np.zeros(400, np.float32)})[0]
    assert np.isfinite(ok).all()
    for n in (399, 200, 1):
        with pytest.raises(InvalidArgument, match="invalid index"):
            session.run(None, {"waveform": np.zeros(n, np.float32)})


def test_in_graph_fbank_matches_the_library_features() -> None:
    fbank = KaldiFbank(FEATURES)
    gen = torch.Generator().manual_seed(1)
    for n in (400, 1_000, 16_000, window_samples(128), 3 * window_samples(128)):
        wave = torch.randn(n, generator=gen) * 0.1 + 0.05  # an offset: DC removal is exercised
        assert float((fbank(wave) - extract(wave, 16_000, FEATURES)).abs().max()) <= 1e-4


def test_refusals(tmp_path: Path, tiny_backbone: VisionTransformer) -> None:
    ckpt = make_checkpoint(tiny_backbone, "kws", method="bottleneck", features=FEATURES)
    run = tmp_path / "kws" / "1"
    ckpt.save(run)
    taken = tmp_path / "taken.onnx"
    taken.write_bytes(b"x")
    assert main(["export", str(run), "--onnx", str(taken)]) == 2  # exists, no --force
    assert taken.read_bytes() == b"x"
    av = av_checkpoint(tiny_av(), "ave", seed=1)
    with pytest.raises(ConfigError, match="one-stream clip adapters"):
        export_standalone(tiny_av(), av, tmp_path / "av.onnx")
    assert not (tmp_path / "av.onnx").exists()
