"""Live streaming over ``GET /stream``: end-to-end lag with N concurrent real-time sessions, and
the most real-time sessions one server holds with lag under one hop (printed, never asserted).

    python -m benchmarks.stream_lag                                  # the default run below
    python -m benchmarks.stream_lag --backbones tiny --engines torch --sessions 1 8 --seconds 5

For each backbone x engine, this process (the client) starts ``python -m service`` as its own
process on 127.0.0.1 (as :mod:`benchmarks.serve_http` does) with a fresh store of 4 adapters of 4
methods, keyword-spotting geometry: 1 s windows (98 frames, 128 mel) at the ``--hop``. Then, for
each N of ``--sessions``, N sessions in this one asyncio process each stream ``--seconds`` of
16 kHz pcm16 mono in 100 ms frames at real time (each names one adapter, round-robin, so batches
mix adapters; starts are spread over one hop, as independent speakers would be), send ``end``
and read until the server's ``end``. Per window:

- **lag** (end to end, audio time to result): receive time - (origin + ``end_s``). The origin is
  the session's audio clock: frame ``k`` holds audio ``[k, k+1) x 100 ms`` and is sent at
  ``origin + (k+1) x 100 ms``, as a microphone would send it once captured; so the lag includes
  the wait for the window's last frame (up to one frame) besides the server and the network.
- **server lag**: the window message's ``lag_s`` (its last sample's arrival -> message sent).

A level is *real time* when its p99 lag is under one hop, no window was dropped, every expected
window (:func:`lookaside.stream_protocol.full_windows`, plus the tail) arrived and no session
closed with an error. The ramp then looks for the most real-time sessions: doubling past the
largest real-time N (up to ``--max-sessions``), or bisecting between it and the smallest N that
was not, for at most ``--ramp-steps`` more levels. The client shares the machine's cores with
the server (a 2-core CPU here), so its own scheduling delay is part of the lag it measures.
Weights are random (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from benchmarks.serve_http import TOKEN, Server, _checkpoint, _write
from lookaside.backbones import build_random
from lookaside.stream_protocol import StreamOpen, StreamReady, full_windows, tail_window

RATE = 16_000
FRAME_S = 0.1
TARGET_FRAMES = 98  # 1 s windows: 97 x 10 ms + 25 ms = 995 ms


@dataclass(frozen=True)
class Backbone:
    setting: str
    """``LOOKASIDE_BACKBONE`` of the server."""
    preset: str
    seed: int
    methods: list[tuple[str, dict[str, Any]]]


Methods = list[tuple[str, dict[str, Any]]]
_TINY: Methods = [("lora", {"rank": 4, "alpha": 8.0}), ("bottleneck", {"rank": 8})]
_VIT_B: Methods = [("lora", {"rank": 8}), ("bottleneck", {"rank": 108, "sites": ["attn", "ffn"]})]
BACKBONES: dict[str, Backbone] = {
    "tiny": Backbone(
        "random:test_vit:1",
        "test_vit",
        1,
        [("linear", {}), *_TINY, ("loaa", {"rank": 4, "kernels": {"attn": "T"}})],
    ),
    "vit-b": Backbone(
        "random:vit_base_patch16",
        "vit_base_patch16",
        0,
        [("linear", {}), *_VIT_B, ("loaa", {"rank": 36, "kernels": {"attn": "T"}})],
    ),
}
ENGINES: dict[str, dict[str, str]] = {
    "torch": {"LOOKASIDE_ENGINE": "torch"},
    "ort-int8": {"LOOKASIDE_ENGINE": "onnxruntime", "LOOKASIDE_ORT_PRECISION": "int8"},
    "ort-fp32": {"LOOKASIDE_ENGINE": "onnxruntime", "LOOKASIDE_ORT_PRECISION": "fp32"},
}


class StreamServer(Server):
    """``python -m service`` in its own process, its output kept in ``log`` for failures."""

    def __init__(
        self,
        store: Path,
        backbone: Backbone,
        engine: dict[str, str],
        *,
        threads: int,
        max_sessions: int,
        cache: Path,
        log: Path,
    ) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {
            **os.environ,
            "LOOKASIDE_BACKBONE": backbone.setting,
            "LOOKASIDE_DEVICE": "cpu",
            "LOOKASIDE_STORE": str(store),
            "LOOKASIDE_ADMIN_TOKEN": TOKEN,
            "LOOKASIDE_PORT": str(self.port),
            "LOOKASIDE_LOG_LEVEL": "warning",
            "LOOKASIDE_STREAM_MAX_SESSIONS": str(max_sessions),
            "LOOKASIDE_ORT_CACHE": str(cache.resolve()),
            "OMP_NUM_THREADS": str(threads),
            **engine,
        }
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service"], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@dataclass
class SessionStats:
    lags: list[float] = field(default_factory=list)
    server_lags: list[float] = field(default_factory=list)
    windows: int = 0
    dropped: int = 0
    expected: int = 0
    errors: list[str] = field(default_factory=list)


class Session:
    """One real-time client: open, pace the audio, read every message until the server's end."""

    def __init__(self, ws: ClientConnection, ready: StreamReady) -> None:
        self.ws, self.ready, self.stats = ws, ready, SessionStats()
        # the hop the server settled on (rounded to 10 ms frames), for the expected windows
        self.hop_frames = round(ready.tracks[0].hop_s * 100)

    @classmethod
    async def open(cls, url: str, adapter: str, hop: float) -> Session:
        ws = await connect(
            url, open_timeout=60, close_timeout=30, compression=None, proxy=None, max_size=2**22
        )
        opening = StreamOpen(adapters=[adapter], sample_rate=RATE, format="pcm16", hop_s=hop)
        await ws.send(opening.model_dump_json(exclude_none=True))
        text = await asyncio.wait_for(ws.recv(), 60)
        if json.loads(text).get("type") != "ready":
            await ws.close()
            raise RuntimeError(f"the server refused the session: {text!r}")
        return cls(ws, StreamReady.model_validate_json(text))

    async def run(self, audio: bytes, origin: float, timeout: float) -> SessionStats:
        reader = asyncio.create_task(self._read(origin))
        step = int(FRAME_S * RATE) * 2
        try:
            async with asyncio.timeout(len(audio) / (2 * RATE) + timeout):  # sends may block
                for k in range(-(-len(audio) // step)):
                    await asyncio.sleep(max(0.0, origin + (k + 1) * FRAME_S - time.monotonic()))
                    await self.ws.send(audio[k * step : (k + 1) * step])
                await self.ws.send('{"type": "end"}')
                await reader
        except (ConnectionClosed, TimeoutError) as exc:
            self.stats.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            reader.cancel()
            await self.ws.close()
        samples = len(audio) // 2
        tail = tail_window(samples, TARGET_FRAMES, self.hop_frames, RATE) is not None
        self.stats.expected = full_windows(samples, TARGET_FRAMES, self.hop_frames, RATE) + tail
        return self.stats

    async def _read(self, origin: float) -> None:
        try:
            async for text in self.ws:
                now = time.monotonic()
                msg = json.loads(text)
                if msg["type"] == "window":
                    self.stats.windows += 1
                    self.stats.lags.append(now - (origin + msg["end_s"]))
                    self.stats.server_lags.append(float(msg["lag_s"]))
                elif msg["type"] == "dropped":
                    self.stats.dropped += 1
                elif msg["type"] == "error":
                    self.stats.errors.append(f"{msg['code']} {msg['reason']}")
                elif msg["type"] == "end":
                    return
        except ConnectionClosed as exc:
            self.stats.errors.append(f"closed {exc.rcvd.code if exc.rcvd else '?'}")


def _cpu(server_pid: int) -> tuple[float, float]:
    """(CPU seconds the whole machine was busy, CPU seconds of this client and the server) so
    far: their difference over a level is other work that shared the cores with it."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    own = 0.0
    for proc in (psutil.Process(), psutil.Process(server_pid)):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            own += times.user + times.system
    return busy, own


def _pcts(values: list[float]) -> tuple[float, float, float]:
    """(p50, p99, max); NaN for no values."""
    if not values:
        return math.nan, math.nan, math.nan
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50), float(p99), float(max(values))


async def _level(
    url: str, adapters: list[str], n: int, seconds: float, hop: float, server_pid: int
) -> dict[str, Any]:
    """N sessions at once, starts spread over one hop; the level's numbers."""
    audio = _audio(seconds)
    opened = await asyncio.gather(
        *(Session.open(url, adapters[i % len(adapters)], hop) for i in range(n)),
        return_exceptions=True,
    )
    sessions = [s for s in opened if isinstance(s, Session)]
    refused = SessionStats(errors=[f"open: {e}" for e in opened if isinstance(e, BaseException)])
    base = time.monotonic() + 0.2
    busy0, own0 = _cpu(server_pid)
    cpu_start = time.monotonic()
    stats = await asyncio.gather(
        *(s.run(audio, base + i * hop / n, seconds + 60.0) for i, s in enumerate(sessions))
    )
    stats.append(refused)
    elapsed = time.monotonic() - base
    busy1, own1 = _cpu(server_pid)
    cpu_wall = (time.monotonic() - cpu_start) * (os.cpu_count() or 1)
    lags = [x for s in stats for x in s.lags]
    server = [x for s in stats for x in s.server_lags]
    p50, p99, worst = _pcts(lags)
    s50, s99, _ = _pcts(server)
    out = {
        "sessions": n,
        "lag_p50_s": p50,
        "lag_p99_s": p99,
        "lag_max_s": worst,
        "server_lag_p50_s": s50,
        "server_lag_p99_s": s99,
        "windows_per_s": len(lags) / elapsed,
        "windows": len(lags),
        "expected": sum(s.expected for s in stats),
        "dropped": sum(s.dropped for s in stats),
        "errors": sorted({e for s in stats for e in s.errors}),
        # share of the machine's CPU that other processes used during the level
        "other_cpu": min(1.0, max(0.0, (busy1 - busy0) - (own1 - own0)) / cpu_wall),
    }
    out["realtime"] = bool(
        p99 < hop and not out["dropped"] and not out["errors"] and out["windows"] == out["expected"]
    )
    return out


def _audio(seconds: float) -> bytes:
    """pcm16 little-endian: a tone and noise (the values do not change the work)."""
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(0)
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


def next_level(done: dict[int, bool], cap: int) -> int | None:
    """The ramp's next N: double past the largest real-time N, or bisect below the smallest N that
    was not; None once the two are adjacent (or the cap is real time)."""
    failed = [n for n, ok in done.items() if not ok]
    hi = min(failed, default=None)
    lo = max((n for n, ok in done.items() if ok and (hi is None or n < hi)), default=0)
    if hi is None:
        return None if lo >= cap else min(cap, max(1, 2 * lo))
    if hi - lo <= 1:
        return None
    mid = round(math.sqrt(lo * hi)) if lo else hi // 2
    return min(hi - 1, max(lo + 1, mid))


def most_realtime(done: dict[int, bool]) -> int:
    """Largest real-time N below every N that was not real time (0: not even one session)."""
    hi = min((n for n, ok in done.items() if not ok), default=math.inf)
    return max((n for n, ok in done.items() if ok and n < hi), default=0)


async def _levels(
    url: str, adapters: list[str], args: argparse.Namespace, server_pid: int
) -> list[dict[str, Any]]:
    await _level(url, adapters, 1, 3.0, args.hop, server_pid)  # warm-up: first batches, pools
    levels: list[dict[str, Any]] = []
    for n in args.sessions:
        levels.append(await _level(url, adapters, n, args.seconds, args.hop, server_pid))
        _print_level(levels[-1])
    for _ in range(args.ramp_steps):
        n_next = next_level({lv["sessions"]: lv["realtime"] for lv in levels}, args.max_sessions)
        if n_next is None:
            break
        levels.append(await _level(url, adapters, n_next, args.seconds, args.hop, server_pid))
        _print_level(levels[-1])
    return levels


def _print_level(lv: dict[str, Any]) -> None:
    print(
        f"  N={lv['sessions']:>3}  lag p50 {lv['lag_p50_s']:6.3f}  p99 {lv['lag_p99_s']:6.3f}  "
        f"server p50 {lv['server_lag_p50_s']:6.3f}  p99 {lv['server_lag_p99_s']:6.3f}  "
        f"{lv['windows_per_s']:6.1f} win/s  {lv['windows']}/{lv['expected']} windows  "
        f"dropped {lv['dropped']}  other CPU {lv['other_cpu']:.0%}  "
        f"{'real time' if lv['realtime'] else 'NOT real time'}"
        + (f"  errors {lv['errors']}" if lv["errors"] else ""),
        flush=True,
    )


def _store(root: Path, backbone: Backbone) -> list[str]:
    """4 adapters of 4 methods, 1 s windows; their names."""
    model = build_random(backbone.preset, seed=backbone.seed)
    names = []
    for i, (method, config) in enumerate(backbone.methods):
        name = f"kws{i}-{method}"
        _write(root, name, *_checkpoint(model, name, method, config, TARGET_FRAMES, i))
        names.append(name)
    return names


def run_one(backbone: str, engine: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One server (backbone x engine) through every level and the ramp."""
    spec = BACKBONES[backbone]
    names = _store(tmp / f"store-{backbone}-{engine}", spec)
    started = time.monotonic()
    server = StreamServer(
        tmp / f"store-{backbone}-{engine}",
        spec,
        ENGINES[engine],
        threads=args.threads,
        max_sessions=max([args.max_sessions, *args.sessions]),
        cache=args.ort_cache,
        log=tmp / f"server-{backbone}-{engine}.log",
    )
    try:
        try:
            server.wait_ready()
            if engine != "torch":
                server.wait_graphs()
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; the server's output:\n{server.tail()}") from exc
        startup = time.monotonic() - started
        print(f"{backbone} / {engine}: ready in {startup:.1f} s", flush=True)
        ws_url = server.url.replace("http://", "ws://") + "/stream"
        levels = asyncio.run(_levels(ws_url, names, args, server.proc.pid))
    finally:
        server.stop()
    done = {lv["sessions"]: lv["realtime"] for lv in levels}
    most = most_realtime(done)
    print(f"  most real-time sessions with lag under one hop: {most}", flush=True)
    return {
        "backbone": backbone,
        "backbone_setting": spec.setting,
        "engine": engine,
        "startup_s": startup,
        "levels": levels,
        "most_realtime_sessions": most,
        "at_cap": most >= args.max_sessions,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", choices=list(BACKBONES), default=list(BACKBONES))
    parser.add_argument(
        "--engines", nargs="+", choices=list(ENGINES), default=["torch", "ort-int8"]
    )
    parser.add_argument("--sessions", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=15.0, help="audio per session per level")
    parser.add_argument("--hop", type=float, default=0.5, help="seconds between window starts")
    parser.add_argument("--max-sessions", type=int, default=64, help="the ramp's bound")
    parser.add_argument("--ramp-steps", type=int, default=3, help="ramp levels after --sessions")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ort-cache", type=Path, default=Path(".lookaside-cache/onnx"))
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    if min(args.sessions) < 1 or args.max_sessions < 1 or args.seconds < 2 * args.hop:
        raise SystemExit("--sessions and --max-sessions must be >= 1, --seconds >= 2 x --hop")
    results: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "window_frames": TARGET_FRAMES,
        "load_average_before": os.getloadavg(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones:
            for engine in args.engines:
                results["runs"].append(run_one(backbone, engine, args, Path(tmp)))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (lags in seconds), and the most real-time sessions."""
    rows = [
        "| backbone | engine | N | lag p50 | lag p99 | server p50 | server p99 | windows/s "
        "| windows | dropped | real time | other CPU |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|",
    ]
    for run in results["runs"]:
        for lv in sorted(run["levels"], key=lambda lv: lv["sessions"]):
            rows.append(
                f"| {run['backbone']} | {run['engine']} | {lv['sessions']} "
                f"| {lv['lag_p50_s']:.3f} | {lv['lag_p99_s']:.3f} | {lv['server_lag_p50_s']:.3f} "
                f"| {lv['server_lag_p99_s']:.3f} | {lv['windows_per_s']:.1f} "
                f"| {lv['windows']}/{lv['expected']} | {lv['dropped']} "
                f"| {'yes' if lv['realtime'] else 'no'} | {lv.get('other_cpu', math.nan):.0%} |"
            )
    rows.append("")
    for run in results["runs"]:
        most, name = run["most_realtime_sessions"], f"{run['backbone']} / {run['engine']}"
        bound = " (the ramp's bound)" if run["at_cap"] else ""
        rows.append(
            f"- {name}: at most {most} real-time sessions with p99 lag under one hop{bound}"
            if most
            else f"- {name}: no level tested was real time"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
