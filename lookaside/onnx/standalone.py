"""One adapter, the frozen backbone and the fbank front end as one self-contained ONNX model.

The way to ship a single adapter to an edge device: the model's input is a 16 kHz mono float32
waveform ``[samples]``, its output each label's score for the adapter's first window, and it
needs onnxruntime only (no torch, no torchaudio). A JSON file beside it carries the labels and
the feature settings (``docs/edge.md``).

The front end reproduces :func:`lookaside.features.extract` in graph operators: Kaldi's framing
with ``snip_edges`` (400-sample frames every 160 samples), each frame's DC offset removed,
pre-emphasis 0.97 (first sample replicated), a symmetric Hann window, zero padding to 512, the
power spectrum, Kaldi's mel banks (``htk_compat``, 20 Hz to Nyquist), the log with float32
epsilon as its floor, then zero rows up to the adapter's frame count and AST's normalisation.
The spectrum is a real DFT as two constant matrix products (cosine and sine, 400 x 257): the
frame's 112 zero-padded samples contribute nothing, and plain MatMul runs on every runtime;
ONNX's STFT would need the per-frame DC removal and pre-emphasis done before it anyway, on
frames it cuts itself. The library subtracts the whole clip's mean before its fbank; a constant
offset is removed again by each frame's DC removal, so the graph skips it.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
import torchaudio
from torch import Tensor, nn
from torch.export import Dim

from lookaside import __version__
from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.errors import ConfigError
from lookaside.features import FRAME_LENGTH_MS, FRAME_SHIFT_MS, SAMPLE_RATE, FeatureConfig
from lookaside.model import MultiAdapterModel
from lookaside.onnx.export import OPSET
from lookaside.tasks import CLIP, task_for

__all__ = ["KaldiFbank", "export_standalone", "window_samples"]

PREEMPHASIS = 0.97
PADDED = 512
_ID = "adapter"


def window_samples(frames: int) -> int:
    """Samples that fill ``frames`` fbank frames (the most the model reads)."""
    shift, length = _geometry()
    return (frames - 1) * shift + length


def _geometry() -> tuple[int, int]:
    return int(SAMPLE_RATE * FRAME_SHIFT_MS / 1000), int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)


class KaldiFbank(nn.Module):
    """``[samples]`` 16 kHz mono -> normalised ``[frames, mel]`` window (see the module doc)."""

    cos: Tensor
    sin: Tensor
    window: Tensor
    mel: Tensor

    def __init__(self, features: FeatureConfig) -> None:
        super().__init__()
        shift, length = _geometry()
        self.shift, self.length = shift, length
        self.frames = features.target_frames
        self.mean, self.std = features.mean, features.std
        bins = PADDED // 2 + 1
        n = torch.arange(length, dtype=torch.float64)[:, None]
        k = torch.arange(bins, dtype=torch.float64)[None, :]
        angle = 2 * math.pi * n * k / PADDED
        self.register_buffer("cos", torch.cos(angle).float(), persistent=False)
        self.register_buffer("sin", torch.sin(angle).float(), persistent=False)
        window = torch.hann_window(length, periodic=False, dtype=torch.float64)
        self.register_buffer("window", window.float(), persistent=False)
        mel, _ = torchaudio.compliance.kaldi.get_mel_banks(
            features.num_mel_bins, PADDED, float(SAMPLE_RATE), 20.0, 0.0, 100.0, -500.0, 1.0
        )
        mel = torch.nn.functional.pad(mel, (0, 1))  # the Nyquist bin has no filter
        self.register_buffer("mel", mel.T.contiguous().float(), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        wave = wave[: window_samples(self.frames)]
        count = (wave.shape[0] - self.length) // self.shift + 1
        starts = torch.arange(count, device=wave.device) * self.shift
        offsets = torch.arange(self.length, device=wave.device)[None, :]
        # Row 0 always reads samples 0..length-1, so a clip shorter than one frame is an index
        # error in the runtime (the library refuses it as too_short), not a silent answer.
        index = torch.cat([offsets, starts[:, None] + offsets])
        frames = wave[index][1:]
        frames = frames - frames.mean(dim=1, keepdim=True)
        previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
        frames = (frames - PREEMPHASIS * previous) * self.window
        power = (frames @ self.cos) ** 2 + (frames @ self.sin) ** 2
        eps = torch.finfo(torch.float32).eps
        fbank = torch.clamp(power @ self.mel, min=eps).log()
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, self.frames - count))
        return (fbank - self.mean) / (2 * self.std)


class WaveformScores(nn.Module):
    """Waveform -> the adapter's scores (softmax, or sigmoid for a multi-label head)."""

    def __init__(self, model: MultiAdapterModel, features: FeatureConfig, multi_label: bool):
        super().__init__()
        self.fbank = KaldiFbank(features)
        self.model = model
        self.multi_label = multi_label

    def forward(self, wave: Tensor) -> Tensor:
        logits = self.model.logits(self.fbank(wave)[None], _ID)[0]
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)


def export_standalone(
    backbone: VisionTransformer, checkpoint: AdapterCheckpoint, out: Path
) -> Path:
    """Write ``out`` (the model) and ``out.with_suffix('.json')`` (labels, settings); returns
    the JSON's path. One-stream (``clip``) adapters only."""
    m = checkpoint.manifest
    if task_for(m.method) is not CLIP:
        raise ConfigError(
            f"{m.name} is a {m.method} adapter ({task_for(m.method).name}): the standalone "
            "export takes one-stream clip adapters; audio-visual ones need frames too"
        )
    features = m.features
    if features.sample_rate != SAMPLE_RATE:
        raise ConfigError(f"the standalone model takes {SAMPLE_RATE} Hz audio only")
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    checkpoint.load_into(bank, _ID)
    model = MultiAdapterModel(backbone, bank).eval()
    multi_label = m.task_type == "multilabel"
    module = WaveformScores(model, features, multi_label).eval()
    shortest, longest = _geometry()[1], window_samples(features.target_frames)
    example = torch.zeros(max(longest, shortest + 1))
    samples = Dim("samples", min=shortest, max=1 << 31)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        torch.onnx.export(
            module,
            (example,),
            str(out),
            input_names=["waveform"],
            output_names=["scores"],
            dynamic_shapes=({0: samples},),
            dynamo=True,
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    info = {
        "name": m.name,
        "version": m.version,
        "method": m.method,
        "labels": list(m.labels),
        "multi_label": multi_label,
        "input": "waveform",
        "output": "scores",
        "sample_rate": SAMPLE_RATE,
        "min_samples": shortest,
        "window_samples": longest,
        "window_seconds": longest / SAMPLE_RATE,
        "features": features.model_dump(mode="json"),
        "backbone_fingerprint": backbone.fingerprint(),
        "lookaside_version": __version__,
    }
    meta = out.with_suffix(".json")
    meta.write_text(json.dumps(info, indent=1) + "\n")
    return meta
