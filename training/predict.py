"""``lookaside-train predict``: label a folder of new clips with a trained adapter, to CSV or JSONL.

Through the library (default) each file is decoded, resampled and cut into windows by the
function ``POST /classify`` runs (:func:`lookaside.clip_windows.featurize_clip`: downmixed and
resampled while decoding, windows at the checkpoint's ``window_hop_frames``), each window is
scored and the clip's scores are the mean of the windows' (:mod:`lookaside.clip_scores`, the
module the service answers with); so a file gets the scores the server would give it. With
``--url`` each file is sent to a server's ``/classify`` instead.

Bounded: at most ``--max-files`` files, each at most :data:`MAX_FILE_BYTES` on disk,
``--max-seconds`` long, :data:`MAX_DECODED_SAMPLES` decoded samples and ``--max-windows`` windows
(counted by arithmetic before any is built). A file that fails gets an ``error`` entry; the run
goes on and exits 1 at the end with the count.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import torch
from tqdm import tqdm

from lookaside.checkpoint import MANIFEST_FILE, AdapterCheckpoint, AdapterManifest
from lookaside.clip_scores import clip_scores, top_labels, window_end
from lookaside.clip_windows import TooManyWindows, featurize_clip
from lookaside.errors import ConfigError, LookasideError
from lookaside.tasks import CLIP
from training.datasets.base import AUDIO_SUFFIXES

__all__ = ["MEDIA_SUFFIXES", "Prediction", "collect_files", "resolve_checkpoint", "run_predict"]

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi")
"""Video containers whose first audio track the decoder (PyAV) reads, as the service does."""
MEDIA_SUFFIXES = frozenset({*AUDIO_SUFFIXES, ".oga", *VIDEO_SUFFIXES})
"""What a folder contributes (explicitly named files are taken whatever their suffix)."""
MAX_FILES = 100_000
MAX_FILE_BYTES = 1 << 30
"""Largest file read (1 GiB): a file is read whole before it is decoded."""
MAX_SECONDS = 600.0
"""Longest clip decoded (lookaside-serve's LOOKASIDE_MAX_AUDIO_SECONDS default)."""
MAX_DECODED_SAMPLES = 1 << 26
"""Decoded samples (channels x frames at the file's rate) one file may make: 10 minutes of 48 kHz
stereo fit; a header that lies cannot make the decoder hold more."""
MAX_WINDOWS = 4096
"""Windows one file may make (lookaside-serve refuses over LOOKASIDE_MAX_REQUEST_ROWS, 1024)."""
MAX_FEATURE_BYTES = 256 * 1024 * 1024
"""float32 window features one file may hold (windows x frames x mel bins x 4)."""
MAX_QUEUED_BYTES = 256 * 1024 * 1024
"""Features queued across files before they are scored, whatever ``--batch-size``."""


@dataclass
class Prediction:
    """One file's output row."""

    path: str
    duration_s: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    timeline: list[tuple[float, float, list[tuple[str, float]]]] | None = None
    """``(start_s, end_s, top_k)`` per window (``--timeline``)."""
    error: str | None = None


@dataclass(frozen=True)
class Limits:
    """What one file may cost (the options ``--max-seconds``, ``--max-windows``)."""

    max_seconds: float = MAX_SECONDS
    max_windows: int = MAX_WINDOWS
    max_samples: int = MAX_DECODED_SAMPLES


class Scorer(Protocol):
    """Turns files into predictions, in order (library or server)."""

    def predict(self, paths: list[Path]) -> Iterator[Prediction]: ...


# -- inputs ---------------------------------------------------------------------------------------
def resolve_checkpoint(path: Path) -> tuple[Path, str | None]:
    """``path`` if it holds a checkpoint, else its highest numbered run (and a line saying so)."""
    if (path / MANIFEST_FILE).is_file():
        return path, None
    if path.is_dir():
        runs = [p for p in path.iterdir() if p.name.isdigit() and (p / MANIFEST_FILE).is_file()]
        if runs:
            best = max(runs, key=lambda p: int(p.name))
            return best, f"using {best} (the highest of the {len(runs)} run(s) in {path})"
    raise ConfigError(
        f"{path} is not a checkpoint (no {MANIFEST_FILE}) nor a folder of numbered runs; pass "
        "<out>/<name>/<version> or <out>/<name>"
    )


def collect_files(paths: list[Path], max_files: int) -> list[Path]:
    """Files named, and the media files under folders named (recursive, in path order),
    deduplicated; refused as soon as there are more than ``max_files`` (folders are walked one
    directory at a time, so the list never grows past it)."""
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_file():
            media: Iterator[Path] = iter([path])
        elif path.is_dir():
            media = media_under(path)
        else:
            raise ConfigError(f"{path} is neither a file nor a folder")
        for p in media:
            found[p] = None
            if len(found) > max_files:
                raise ConfigError(
                    f"more than {max_files} files to predict; pass fewer paths or raise --max-files"
                )
    if not found:
        suffixes = ", ".join(sorted(MEDIA_SUFFIXES))
        raise ConfigError(
            f"no audio or video files ({suffixes}) under {', '.join(map(str, paths))}"
        )
    return list(found)


def media_under(root: Path) -> Iterator[Path]:
    """The media files under ``root`` in path order (each directory's names sorted, a
    subdirectory's files where its name sorts), walked lazily; symlinked folders not followed."""
    stack = [iter(_entries(root))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry.is_dir(follow_symlinks=False):
            stack.append(iter(_entries(Path(entry.path))))
        elif Path(entry.name).suffix.lower() in MEDIA_SUFFIXES and entry.is_file():
            yield Path(entry.path)


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """One directory's entries, sorted by name (an unreadable one is skipped)."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def read_file(path: Path) -> bytes:
    """The file's bytes, refused over :data:`MAX_FILE_BYTES` before it is read."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"the file is {size} bytes, over the limit of {MAX_FILE_BYTES}")
    return path.read_bytes()


# -- through the library --------------------------------------------------------------------------
@dataclass
class _Pending:
    prediction: Prediction
    features: torch.Tensor | None = None
    start_s: list[float] = field(default_factory=list)


class LibraryScorer:
    """The checkpoint in a fresh serving bank on its backbone; windows batched across files
    (at most ``batch_size`` windows per forward, scored once ``batch_size`` windows or
    :data:`MAX_QUEUED_BYTES` of features are queued)."""

    def __init__(
        self,
        ckpt: AdapterCheckpoint,
        *,
        backbone: str | None,
        device: torch.device,
        batch_size: int,
        top_k: int,
        timeline: bool,
        limits: Limits,
    ) -> None:
        from lookaside.backbones import load_backbone
        from lookaside.model import MultiAdapterModel
        from training.export import make_bank

        self.manifest = ckpt.manifest
        CLIP.check_method(self.manifest.id, self.manifest.method)
        net = load_backbone(backbone or self.manifest.backbone.source, device=device).eval()
        bank = make_bank(net, trainable=False)
        self.adapter_id = ckpt.load_into(bank)  # refuses a backbone of another fingerprint
        self.model = MultiAdapterModel(net, bank)
        self.device, self.batch_size = device, batch_size
        self.top_k, self.timeline, self.limits = top_k, timeline, limits
        self.cfg = self.manifest.features

    def featurize(self, path: Path) -> _Pending:
        """Decode and window one file with ``/classify``'s own function
        (:func:`lookaside.clip_windows.featurize_clip`); a failure becomes its error."""
        pending = _Pending(Prediction(str(path)))
        cfg, limits = self.cfg, self.limits
        try:
            clip = featurize_clip(
                read_file(path),
                [cfg],
                max_seconds=min(limits.max_seconds, cfg.max_seconds),
                max_samples=limits.max_samples,
                max_rows=limits.max_windows,
                max_feature_bytes=MAX_FEATURE_BYTES,
            )
        except TooManyWindows as exc:
            flag = "--max-windows" if exc.reason == "too_many_rows" else "a shorter clip"
            pending.prediction.error = f"{exc} ({flag})"
            return pending
        except (LookasideError, OSError, ValueError, RuntimeError) as exc:
            pending.prediction.error = str(exc) or type(exc).__name__
            return pending
        windows = clip.by_config[cfg]
        pending.prediction.duration_s = round(clip.duration_s, 6)
        pending.features, pending.start_s = windows.features, windows.start_s
        return pending

    def predict(self, paths: list[Path]) -> Iterator[Prediction]:
        queue: list[_Pending] = []
        rows = size = 0
        for path in paths:
            pending = self.featurize(path)
            queue.append(pending)
            if pending.features is not None:
                rows += pending.features.shape[0]
                size += pending.features.nbytes
            if rows >= self.batch_size or size >= MAX_QUEUED_BYTES:
                yield from self._flush(queue)
                queue, rows, size = [], 0, 0
        yield from self._flush(queue)

    def _flush(self, queue: list[_Pending]) -> Iterator[Prediction]:
        """Score the queued files' windows, in file order."""
        scored = [p for p in queue if p.features is not None]
        logits = self._logits([p.features for p in scored if p.features is not None])
        for pending, rows in zip(scored, logits, strict=True):
            self._fill(pending, rows)
        for pending in queue:
            yield pending.prediction

    def _logits(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor's ``[windows, classes]`` logits, in batches of ``batch_size`` windows cut
        across tensors (only a batch's own windows are copied together)."""
        out: list[torch.Tensor] = []
        batch: list[torch.Tensor] = []
        queued = 0
        for f in feats:
            i = 0
            while i < f.shape[0]:
                part = f[i : i + self.batch_size - queued]
                batch.append(part)
                queued += part.shape[0]
                i += part.shape[0]
                if queued == self.batch_size:
                    out.append(self._forward(batch))
                    batch, queued = [], 0
        if batch:
            out.append(self._forward(batch))
        if not feats:
            return []
        return list(torch.split(torch.cat(out), [f.shape[0] for f in feats]))

    def _forward(self, batch: list[torch.Tensor]) -> torch.Tensor:
        x = batch[0] if len(batch) == 1 else torch.cat(batch)
        with torch.inference_mode():
            logits = CLIP.logits(self.model, (x.to(self.device),), self.adapter_id)
        return logits.float().cpu()

    def _fill(self, pending: _Pending, logits: torch.Tensor) -> None:
        m, p = self.manifest, pending.prediction
        windows, clip = clip_scores(logits, multi_label=m.task_type == "multilabel")
        labels = list(m.labels)
        p.top_k = top_labels(clip, labels, self.top_k)
        if self.timeline:
            assert p.duration_s is not None
            span = self.cfg.window_seconds
            p.timeline = [
                (
                    round(s, 6),
                    round(window_end(s, span, p.duration_s), 6),
                    top_labels(row, labels, self.top_k),
                )
                for s, row in zip(pending.start_s, windows, strict=True)
            ]


# -- through a server -----------------------------------------------------------------------------
class ServerScorer:
    """Each file sent to ``/classify`` with :class:`lookaside.client.Client` (no token: the
    route is open; the admin token only guards the routes that change adapters)."""

    def __init__(
        self,
        url: str,
        adapter: str,
        manifest: AdapterManifest,
        *,
        top_k: int,
        timeline: bool,
        timeout: float,
    ) -> None:
        self.url, self.adapter, self.manifest = url, adapter, manifest
        self.top_k, self.timeline, self.timeout = top_k, timeline, timeout

    def predict(self, paths: list[Path]) -> Iterator[Prediction]:
        from lookaside.client import ApiError, Client

        with Client(self.url, timeout=self.timeout) as client:
            for path in paths:
                p = Prediction(str(path))
                try:
                    data = read_file(path)
                    answer = client.classify(data, self.adapter, top_k=min(self.top_k, 1000))
                except (ApiError, ConfigError, OSError) as exc:
                    p.error = str(exc)
                    yield p
                    continue
                (result,) = answer.results
                p.duration_s = answer.duration_s
                p.top_k = [(s.label, s.score) for s in result.labels]
                if self.timeline:
                    p.timeline = self._timeline(result, answer.duration_s, p.top_k)
                yield p

    def _timeline(
        self, result: Any, duration_s: float, top_k: list[tuple[str, float]]
    ) -> list[tuple[float, float, list[tuple[str, float]]]]:
        """The server's windows; a one-window clip (no timeline in the answer) is its own."""
        if result.timeline is None:
            end = window_end(0.0, self.manifest.features.window_seconds, duration_s)
            return [(0.0, round(end, 6), top_k)]
        return [
            (w.start_s, w.end_s, [(s.label, s.score) for s in w.labels]) for w in result.timeline
        ]


# -- output ---------------------------------------------------------------------------------------
def _json_row(p: Prediction) -> dict[str, Any]:
    row: dict[str, Any] = {
        "path": p.path,
        "duration_s": p.duration_s,
        "top_k": [{"label": label, "score": score} for label, score in p.top_k],
    }
    if p.timeline is not None:
        row["timeline"] = [
            {"start_s": a, "end_s": b, "top_k": [{"label": x, "score": s} for x, s in top]}
            for a, b, top in p.timeline
        ]
    row["error"] = p.error
    return row


class Writer:
    """Rows to ``.csv`` (one column pair per rank) or ``.jsonl`` (one object per file)."""

    def __init__(self, stream: IO[str], fmt: str, k: int) -> None:
        self.stream, self.fmt, self.k = stream, fmt, k
        self.csv = csv.writer(stream) if fmt == "csv" else None
        if self.csv is not None:
            ranks = [f"{c}_{i}" for i in range(1, k + 1) for c in ("label", "score")]
            self.csv.writerow(["path", "duration_s", *ranks, "error"])

    def write(self, p: Prediction) -> None:
        if self.csv is None:
            self.stream.write(json.dumps(_json_row(p)) + "\n")
            return
        cells: list[Any] = []
        for i in range(self.k):
            cells += [*p.top_k[i]] if i < len(p.top_k) else ["", ""]
        duration = "" if p.duration_s is None else p.duration_s
        self.csv.writerow([p.path, duration, *cells, p.error or ""])
        self.stream.flush()


def output_format(out: str | None, timeline: bool) -> str:
    """``csv`` or ``jsonl`` from the output's suffix (stdout: JSONL)."""
    if out is None or out == "-" or out.lower().endswith(".jsonl"):
        return "jsonl"
    if out.lower().endswith(".csv"):
        if timeline:
            raise ConfigError("--timeline needs JSONL output (--out FILE.jsonl or stdout)")
        return "csv"
    raise ConfigError(f"--out {out}: name a .csv or .jsonl file, or - for JSONL on stdout")


def run_predict(
    scorer: Scorer, files: list[Path], out: str | None, fmt: str, k: int, progress: bool
) -> tuple[int, int]:
    """Write every file's prediction; returns (files, failed)."""
    failed = 0
    stream: IO[str] = sys.stdout
    if out is not None and out != "-":
        stream = open(out, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed below)
    try:
        writer = Writer(stream, fmt, k)
        bar = tqdm(total=len(files), unit="file", disable=not (progress and sys.stderr.isatty()))
        for p in scorer.predict(files):
            writer.write(p)
            failed += p.error is not None
            bar.update()
        bar.close()
    finally:
        if stream is not sys.stdout:
            stream.close()
    return len(files), failed
