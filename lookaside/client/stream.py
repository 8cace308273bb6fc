"""Live streaming to ``GET /stream`` from Python, and the ``lookaside-stream`` command.

::

    from lookaside.client.stream import StreamWindow, file_source, stream

    with stream("http://127.0.0.1:8000", file_source("call.wav"), "speech") as session:
        for message in session:
            if isinstance(message, StreamWindow):
                print(message.start_s, message.results[0].labels[0].label)

The API is :mod:`lookaside.client.stream_session` (:func:`stream`, :class:`StreamClosed`) and
:mod:`lookaside.client.stream_sources` (a file, an array, a microphone); the messages are
:mod:`lookaside.stream_protocol`'s models. docs/stream-client.md has the command's examples.

Exit status of the command: 0 when the stream ended (also after one Ctrl-C, which sends
``end`` and waits for the last windows), 1 when the server closed it with an error or could not
be reached, 2 for a usage error (bad flags, a file that cannot be decoded, a device that cannot
be opened), 130 after a second Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from lookaside.client.errors import ClientError
from lookaside.client.stream_session import (
    DEFAULT_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    StreamClosed,
    StreamMessage,
    StreamSession,
    stream,
    ws_url,
)
from lookaside.client.stream_sources import (
    ArraySource,
    AudioSource,
    DeviceSource,
    file_source,
    open_device,
)
from lookaside.errors import LookasideError
from lookaside.stream_protocol import (
    StreamDropped,
    StreamEnd,
    StreamReady,
    StreamWindow,
)

__all__ = [
    "ArraySource",
    "AudioSource",
    "DeviceSource",
    "StreamClosed",
    "StreamDropped",
    "StreamEnd",
    "StreamMessage",
    "StreamReady",
    "StreamSession",
    "StreamWindow",
    "file_source",
    "format_window",
    "main",
    "open_device",
    "stream",
    "ws_url",
]

PROG = "lookaside-stream"
EXAMPLES = """examples:
  lookaside-stream call.wav --adapter speech
  lookaside-stream call.wav --adapter speech,esc50@2 --hop 0.5 --json --no-realtime
  lookaside-stream --mic --adapter speech --url http://gpu-box:8000
  lookaside-stream --mic --mic-format alsa --mic-device hw:1 --adapter speech"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Stream a file or the microphone to a Lookaside server (GET /stream) and "
        "print each window's labels as the server answers.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", nargs="?", help="an audio file (WAV, FLAC, Ogg, MP3, AAC, video)")
    p.add_argument("--mic", action="store_true", help="stream the microphone instead of a file")
    p.add_argument(
        "--adapter",
        action="append",
        required=True,
        help="NAME or NAME@VERSION; repeat or comma-separate for several",
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    p.add_argument(
        "--hop", type=float, help="seconds between window starts (default: each adapter's own hop)"
    )
    p.add_argument(
        "--follow",
        action="store_true",
        help="follow the active version (a swap "
        "moves the session); default: the versions at open serve the whole session",
    )
    p.add_argument("--top-k", type=int, default=5, help="labels per adapter per window (5)")
    p.add_argument(
        "--no-realtime",
        action="store_true",
        help="send a file as fast as the server's max_ahead_s allows, not at real time",
    )
    p.add_argument("--json", action="store_true", help="print every message as a JSON line")
    p.add_argument("--chunk", type=float, default=0.1, help="seconds of audio per frame (0.1)")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for a message beyond a window of audio",
    )
    p.add_argument(
        "--max-message-bytes",
        type=_positive_int,
        default=MAX_MESSAGE_BYTES,
        help="largest message read from the server (4 MiB; adapters x top-k make it grow)",
    )
    p.add_argument("--mic-format", help="FFmpeg input device (pulse, alsa, avfoundation, dshow)")
    p.add_argument("--mic-device", help="the device's name (default, hw:1, :0, audio=NAME)")
    p.add_argument("--mic-rate", type=int, default=16_000, help="microphone rate, Hz (16000)")
    p.add_argument("--mic-channels", type=int, default=1, choices=(1, 2))
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def format_window(message: StreamWindow | StreamDropped, tracks: int = 1) -> str:
    """One line for a window: its time range, the top label and score per adapter, the lag."""
    span = f"{message.start_s:8.2f}-{message.end_s:.2f} s"
    track = f" [track {message.track}]" if tracks > 1 else ""
    if isinstance(message, StreamDropped):
        return f"{span}{track}  dropped ({message.reason}): {message.message}"
    tops = []
    for result in message.results:
        top = result.labels[0] if result.labels else None
        label = f"{top.label} {top.score:.3f}" if top is not None else "-"
        tops.append(f"{result.adapter}@{result.version}: {label}")
    return f"{span}{track}  {' | '.join(tops)}  lag {message.lag_s:.3f} s"


def _describe(ready: StreamReady, what: str, url: str) -> str:
    tracks = "; ".join(
        f"window {t.window_s:g} s, hop {t.hop_s:g} s: "
        + ", ".join(f"{a.adapter}@{a.version}" for a in t.adapters)
        for t in ready.tracks
    )
    rate = f"{ready.sample_rate} Hz, {ready.channels} ch"
    return f"{PROG}: {what} ({rate}) -> {url}: {tracks}"


def _say(text: str, *, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)  # noqa: T201


def _source(args: argparse.Namespace) -> tuple[AudioSource, str]:
    if args.mic:
        source = open_device(
            args.mic_format,
            args.mic_device,
            sample_rate=args.mic_rate,
            channels=args.mic_channels,
        )
        return source, "microphone"
    return file_source(args.file), str(args.file)


class _Printer:
    """Prints each message: windows to stdout, the opening and end summary to stderr (or every
    message as a JSON line to stdout)."""

    def __init__(self, as_json: bool, what: str, url: str) -> None:
        self.as_json, self.what, self.url = as_json, what, url
        self.tracks = 1

    def __call__(self, message: StreamMessage) -> None:
        if self.as_json:
            _say(message.model_dump_json())
        elif isinstance(message, StreamReady):
            self.tracks = len(message.tracks)
            _say(_describe(message, self.what, self.url), err=True)
        elif isinstance(message, StreamEnd):
            _say(
                f"{PROG}: end: {message.windows} windows, {message.dropped} dropped, "
                f"{message.seconds:.2f} s of audio",
                err=True,
            )
        else:
            _say(format_window(message, tracks=self.tracks))


class _CtrlC:
    """The first Ctrl-C stops the audio (``end`` is sent, the last windows still print); the
    second one interrupts."""

    def __init__(self, session: StreamSession) -> None:
        self.session = session
        self.previous: Callable[[int, FrameType | None], Any] | int | None = None
        self.pressed = False

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        _say(f"{PROG}: stopping: sending end (Ctrl-C again to quit now)", err=True)
        self.session.stop()


def _run(session: StreamSession, printer: _Printer) -> int:
    try:
        with _CtrlC(session), session:
            for message in session:
                printer(message)
    except KeyboardInterrupt:
        _say(f"{PROG}: interrupted", err=True)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``lookaside-stream FILE|--mic --adapter NAME[,NAME] [--url URL] [--hop S] [--follow]
    [--top-k K] [--no-realtime] [--json]``; returns the exit status (module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mic == (args.file is not None):
        parser.error("name a FILE or --mic (one of them)")
    try:
        ws_url(args.url)
        source, what = _source(args)
    except LookasideError as exc:
        _say(f"{PROG}: {exc}", err=True)
        return 2
    try:
        session = stream(
            args.url,
            source,
            ",".join(args.adapter),
            hop_s=args.hop,
            follow=args.follow,
            top_k=args.top_k,
            realtime=not args.no_realtime,
            chunk_s=args.chunk,
            timeout=args.timeout,
            max_message_bytes=args.max_message_bytes,
        )
    except ClientError as exc:  # the opening message's own checks (hop, top-k, adapters)
        source.close()
        _say(f"{PROG}: {exc}", err=True)
        return 2
    try:
        return _run(session, _Printer(args.json, what, session.url))
    except LookasideError as exc:  # closed by the server, unreachable, or the source failed
        _say(f"{PROG}: {exc}", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
