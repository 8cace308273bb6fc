"""One frozen backbone + an adapter bank: the forward every user of the library calls.

``forward(spec, adapter_ids)`` runs one backbone pass per prompt group (one pass for any batch
without prompt tuning) in which every site applies each row's own adapter, then each row's own
head. Each pass holds its route (so the bank never reuses a slot the pass reads) and releases it
when the pass ends, even on error. Training, the service and the benchmarks all go through here.

``forward_av(spec, pixels, adapter_ids)`` is the audio-visual counterpart (AV-PEA): each row is a
clip of one-second segments; both streams of every segment run through the backbone together,
each segment's two CLS tokens are averaged into one fused token, the adapter's ``clip`` site (a
temporal model) runs across the segments of each clip, and each segment gets logits from the
row's head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from lookaside.adapters.slot_index import index_tensor
from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.bank.route import RowRoute
from lookaside.errors import ConfigError
from lookaside.sites import CLIP_LAYER, TokenLayout
from lookaside.tasks import AV_EVENTS, CLIP, TaskKind

FUSED_LAYOUT = TokenLayout(num_prefix=1, num_prompts=0, grid=(1, 1))
"""How the heads see a segment: its fused token twice, as the prefix and as the one grid token,
so ``cls`` and ``mean`` pooling both give the fused token."""


class FeatureRunner(Protocol):
    """Another runtime for the backbone pass (ONNX Runtime: :mod:`lookaside.onnx.runner`).

    Each method returns what the backbone's own method returns for the same batch and route, or
    None to let the backbone run it (no graph for these adapters yet).
    """

    def features(self, spec: Tensor, route: RowRoute) -> tuple[Tensor, TokenLayout] | None: ...

    def features_av(
        self, spec: Tensor, pixels: Tensor, route: RowRoute
    ) -> tuple[tuple[Tensor, TokenLayout], tuple[Tensor, TokenLayout]] | None: ...


class MultiAdapterModel(nn.Module):
    """The shared backbone (never copied) and the bank of adapters beside it.

    The bank must be built for this backbone: same config, same device, and the same dtype unless
    the forward runs under ``torch.autocast`` (a bf16 bank beside an fp32 backbone).
    """

    def __init__(self, backbone: VisionTransformer, bank: AdapterBank) -> None:
        super().__init__()
        if bank.backbone_cfg != backbone.cfg:
            raise ConfigError(
                "the adapter bank was built for another backbone config; build it with "
                "AdapterBank.for_backbone(backbone)"
            )
        param = next(backbone.parameters())
        if not _same_device(bank.device, param.device):
            raise ConfigError(
                f"the adapter bank lives on {bank.device} but the backbone on {param.device}; "
                "build the bank with AdapterBank.for_backbone(backbone) or device="
                f"{str(param.device)!r}"
            )
        if bank.fingerprint is not None and bank.fingerprint != backbone.fingerprint():
            raise ConfigError(
                "the adapter bank was built for another backbone (fingerprint "
                f"{bank.fingerprint} != {backbone.fingerprint()}); build it with "
                "AdapterBank.for_backbone(backbone)"
            )
        self.backbone = backbone
        self.bank = bank
        self.runner: FeatureRunner | None = None
        """Where the backbone pass runs when set (the heads and ``clip`` sites stay here)."""

    def forward(self, spec: Tensor, adapter_ids: Sequence[str | None]) -> list[Tensor | None]:
        """Per-row logits (None for rows routed to no adapter).

        Args:
            spec: ``[batch, frames, mel]`` normalised fbank; all rows share one frame count.
            adapter_ids: one adapter id (or None) per row.
        """
        if len(adapter_ids) != spec.shape[0]:
            raise ConfigError(f"{len(adapter_ids)} adapter ids for a batch of {spec.shape[0]} rows")
        self._check_dtype(spec)
        self._check_task(adapter_ids, CLIP)
        out: list[Tensor | None] = [None] * len(adapter_ids)
        for rows in self.bank.partition(adapter_ids):
            ids = [adapter_ids[r] for r in rows]
            sub = (
                spec
                if len(rows) == len(adapter_ids)
                else spec.index_select(0, index_tensor(rows, spec.device))
            )
            with self.bank.route(ids) as route:
                tokens, layout = self._features(sub, route)
                logits = self.bank.classify(tokens, layout, ids, route=route)
            for row, row_logits in zip(rows, logits, strict=True):
                out[row] = row_logits
        return out

    def logits(self, spec: Tensor, adapter_id: str) -> Tensor:
        """``[batch, classes]`` logits of one adapter for the whole batch (training, eval)."""
        self._check_dtype(spec)
        self._check_task([adapter_id], CLIP)
        with self.bank.route([adapter_id] * spec.shape[0]) as route:
            tokens, layout = self.backbone.forward_features(spec, route)
            logits: Tensor = route.heads[adapter_id](tokens, layout)
            return logits

    # -- audio-visual ------------------------------------------------------------------------
    def forward_av(
        self, spec: Tensor, pixels: Tensor, adapter_ids: Sequence[str | None]
    ) -> list[Tensor | None]:
        """Per-clip, per-segment logits ``[segments, classes]`` (None for rows without adapter).

        Args:
            spec: ``[clips, segments, frames, mel]`` normalised fbank of each one-second segment.
            pixels: ``[clips, segments, 3, height, width]`` ImageNet-normalised frames.
            adapter_ids: one audio-visual adapter id (or None) per clip; clips may mix adapters.
        """
        clips, segments = self._check_av(spec, pixels, adapter_ids)
        out: list[Tensor | None] = [None] * clips
        rows = [i for i, a in enumerate(adapter_ids) if a is not None]
        if not rows:
            return out
        ids = [adapter_ids[r] for r in rows]
        if len(rows) != clips:
            index = index_tensor(rows, spec.device)
            spec, pixels = spec.index_select(0, index), pixels.index_select(0, index)
        segment_ids = [a for a in ids for _ in range(segments)]
        with self.bank.route(segment_ids) as route, self.bank.route(ids) as clip_route:
            fused = self._fused_segments(spec, pixels, route, clip_route)
            logits = self.bank.classify(fused, FUSED_LAYOUT, segment_ids, route=route)
        for i, row in enumerate(rows):
            per_segment = logits[i * segments : (i + 1) * segments]
            out[row] = torch.stack([t for t in per_segment if t is not None])
        return out

    def logits_av(self, spec: Tensor, pixels: Tensor, adapter_id: str) -> Tensor:
        """``[clips, segments, classes]`` logits of one audio-visual adapter (training, eval)."""
        clips, segments = self._check_av(spec, pixels, [adapter_id] * spec.shape[0])
        with (
            self.bank.route([adapter_id] * (clips * segments)) as route,
            self.bank.route([adapter_id] * clips) as clip_route,
        ):
            fused = self._fused_segments(spec, pixels, route, clip_route)
            logits: Tensor = route.heads[adapter_id](fused, FUSED_LAYOUT)
        return logits.view(clips, segments, -1)

    def _fused_segments(
        self, spec: Tensor, pixels: Tensor, route: RowRoute, clip_route: RowRoute
    ) -> Tensor:
        """``[clips * segments, 2, D]`` (see :data:`FUSED_LAYOUT`): both streams through the
        backbone, the prefix tokens of each segment averaged (the fused CLS), then the clip site
        across the segments of each clip."""
        clips, segments = spec.shape[:2]
        flat_spec, flat_pixels = spec.flatten(0, 1), pixels.flatten(0, 1)
        streams = (
            self.runner.features_av(flat_spec, flat_pixels, route)
            if self.runner is not None
            else None
        )
        if streams is None:
            streams = self.backbone.forward_features_av(flat_spec, flat_pixels, route)
        (audio, la), (visual, lv) = streams
        fused = torch.cat([audio[:, : la.num_prefix], visual[:, : lv.num_prefix]], dim=1)
        tokens = fused.mean(dim=1).view(clips, segments, -1)
        clip_layout = TokenLayout(num_prefix=0, num_prompts=0, grid=(1, segments))
        tokens = clip_route.add_to(CLIP_LAYER, "clip", tokens, tokens, clip_layout)
        return tokens.reshape(clips * segments, 1, -1).expand(-1, 2, -1)

    def _features(self, spec: Tensor, route: RowRoute) -> tuple[Tensor, TokenLayout]:
        """The backbone pass on the runner when it has a graph for it, else in eager PyTorch."""
        out = self.runner.features(spec, route) if self.runner is not None else None
        return out if out is not None else self.backbone.forward_features(spec, route)

    def _check_av(
        self, spec: Tensor, pixels: Tensor, adapter_ids: Sequence[str | None]
    ) -> tuple[int, int]:
        if spec.dim() != 4 or pixels.dim() != 5 or spec.shape[:2] != pixels.shape[:2]:
            raise ConfigError(
                "expected spec [clips, segments, frames, mel] and pixels [clips, segments, 3, "
                f"height, width] with the same clips and segments, got {tuple(spec.shape)} and "
                f"{tuple(pixels.shape)}"
            )
        if len(adapter_ids) != spec.shape[0]:
            raise ConfigError(f"{len(adapter_ids)} adapter ids for {spec.shape[0]} clips")
        self.backbone.check_visual()
        self._check_dtype(spec)
        self._check_task(adapter_ids, AV_EVENTS)
        return spec.shape[0], spec.shape[1]

    def _check_task(self, adapter_ids: Sequence[str | None], task: TaskKind) -> None:
        """Refuse, by name, an adapter whose method does not serve ``task``."""
        for adapter_id in set(adapter_ids):
            if adapter_id is None:
                continue
            entry = self.bank.entries.get(adapter_id)
            if entry is not None:
                task.check_method(adapter_id, entry.method)

    def _check_dtype(self, spec: Tensor) -> None:
        """Refuse a bank dtype the forward cannot mix (instead of a raw matmul dtype error)."""
        compute = next(self.backbone.parameters()).dtype
        if self.bank.dtype == compute:
            return
        if torch.is_autocast_enabled(spec.device.type):
            return
        raise ConfigError(
            f"the adapter bank stores {_name(self.bank.dtype)} but the backbone computes in "
            f"{_name(compute)}: run the forward under torch.autocast("
            f"{spec.device.type!r}, dtype=torch.{_name(self.bank.dtype)}) or build the bank with "
            f"dtype=torch.{_name(compute)}"
        )


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` name the same device when 0 is the current one."""
    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index == b.index:
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (
        b.index if b.index is not None else current
    )
