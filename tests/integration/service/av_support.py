"""Helpers of the audio-visual service tests: a tiny two-stream backbone, AV-PEA checkpoints, a
synthetic video whose picture and sound switch at known seconds, and the independent reference
(the library's ``MultiAdapterModel.forward_av`` on each window alone, no service code)."""

from __future__ import annotations

import torch

from lookaside.backbone import VisionTransformer
from lookaside.backbones import build_random
from lookaside.bank import AdapterBank
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.features import FeatureConfig
from lookaside.model import MultiAdapterModel
from lookaside.video import av_inputs, decode_video
from tests.av_synth import Clip, Second, encode
from tests.integration.service.svc_support import make_checkpoint

AV_BACKBONE = "random:test_vit_av:1"
"""The settings string of :func:`tiny_av`."""
AV_LABELS = ["Bark", "Flute", "background"]
AV_FEATURES = FeatureConfig(target_frames=100, num_mel_bins=64)
SEGMENTS = 3
RED, BLUE, GREY = (220, 40, 40), (40, 70, 220), (90, 90, 90)
SECONDS = [
    Second(GREY, None),
    Second(GREY, None),
    Second(RED, 440.0),
    Second(RED, 440.0),
    Second(BLUE, 2600.0),
    Second(BLUE, 2600.0),
    Second(GREY, None),
]
"""7 s: background, a barking red stretch, a fluting blue stretch, background; with 3-second
windows the clip runs as [0, 3), [3, 6) (one job) and [6, 7) (a second job)."""


def clip_bytes(seconds: list[Second] = SECONDS, audio: bool = True, webm: bool = False) -> bytes:
    """The clip in Matroska (MPEG-4 + PCM), or WebM (VP8 + Opus: what a browser plays)."""
    if webm:
        clip = Clip(
            seconds,
            fps=2,
            size=(48, 48),
            container="webm",
            video_codec="libvpx",
            audio_codec="libopus",
        )
        return encode(clip)
    return encode(Clip(seconds, fps=2, size=(48, 48), audio_codec="pcm_s16le" if audio else None))


def tiny_av() -> VisionTransformer:
    return build_random("test_vit_av", seed=1)


def av_checkpoint(
    backbone: VisionTransformer, name: str, seed: int, version: int = 1
) -> AdapterCheckpoint:
    """An AV-PEA adapter with non-zero random weights (3-second windows)."""
    return make_checkpoint(
        backbone,
        name,
        method="avpea",
        config={"temporal_heads": 2, "segments": SEGMENTS},
        labels=AV_LABELS,
        features=AV_FEATURES,
        seed=seed,
        version=version,
    )


def reference_av(
    backbone: VisionTransformer, ckpt: AdapterCheckpoint, video: bytes, audio: bytes | None = None
) -> torch.Tensor:
    """``[seconds, classes]`` probabilities: the library alone, one window per forward."""
    size = backbone.cfg.image_size
    decoded = decode_video(video, audio, frame_size=size)
    spec, pixels = av_inputs(decoded, ckpt.manifest.features, size)
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    ckpt.load_into(bank, "ref")
    model = MultiAdapterModel(backbone, bank).eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, spec.shape[0], SEGMENTS):
            stop = min(start + SEGMENTS, spec.shape[0])
            (logits,) = model.forward_av(spec[None, start:stop], pixels[None, start:stop], ["ref"])
            assert logits is not None
            rows.append(torch.softmax(logits.float(), dim=-1))
    return torch.cat(rows)


def expected_events(probs: torch.Tensor) -> list[tuple[int, int, str, float]]:
    """Runs of one non-background label, with the mean probability (written out here)."""
    labels = [AV_LABELS[int(i)] for i in probs.argmax(1)]
    events, t = [], 0
    while t < len(labels):
        end = t
        while end < len(labels) and labels[end] == labels[t]:
            end += 1
        if labels[t] != "background":
            cls = AV_LABELS.index(labels[t])
            events.append((t, end, labels[t], float(probs[t:end, cls].mean())))
        t = end
    return events
