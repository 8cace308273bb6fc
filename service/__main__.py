"""``lookaside-serve`` / ``python -m service``: settings from the environment (``LOOKASIDE_*``,
``.env``) and the command line, then uvicorn on ``host:port``; prints the URL to use (with the
port the OS picked for ``--port 0``).

:func:`uvicorn_config` is the one place the server's connection limits are set (header and
keep-alive timeouts, connection cap, header size); the tests' in-thread servers use it too.
The admin token is refused on the command line: every local user sees a process's arguments
(``ps``, ``/proc/<pid>/cmdline``) and shells keep them in their history, so a warning would come
after the leak. It comes from ``LOOKASIDE_ADMIN_TOKEN_FILE`` (a Docker secret) or the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import signal
import socket
import sys
import threading
from collections.abc import Generator, Sequence
from typing import Any, Literal, get_args, get_origin

import uvicorn
from pydantic import ValidationError
from starlette.types import ASGIApp
from uvicorn.server import HANDLED_SIGNALS

from lookaside.backbones import check_available
from lookaside.cli_help import HelpFormatter, validation_lines, with_default
from lookaside.errors import LookasideError
from service import logging as service_logging
from service.app import create_app
from service.http_limits import bounded_h11
from service.settings import ServiceSettings
from service.stream.ws_protocol import GoingAwayWebSockets

log = logging.getLogger("service")

MAX_HEADER_BYTES = 16 * 1024
"""Most bytes of a request line + headers buffered while still incomplete (h11's incomplete-event
bound; past it uvicorn answers 400 and closes). 16 KiB is h11's default, set here so it is a
decision, not an accident."""
REFUSED_FLAGS = {
    "admin_token": "the admin token on a command line is visible to every local user (ps, "
    "/proc/<pid>/cmdline) and lands in shell history: put it in a file readable only by the "
    "server and pass --admin-token-file FILE (or LOOKASIDE_ADMIN_TOKEN_FILE, e.g. a Docker "
    "secret), or set LOOKASIDE_ADMIN_TOKEN in the environment",
}
"""Settings refused as flags, with the reason and what to do instead."""
ALIASES = {"ray_replicas": ("--replicas",)}
"""Short spellings of some flags (``lookaside-serve --ray --replicas 4``)."""


_EXAMPLES = """examples:
  LOOKASIDE_ALLOW_NO_ADMIN_TOKEN=true lookaside-serve          # local try-out, admin routes open
  lookaside-serve --admin-token-file /run/secrets/lookaside_admin --host 0.0.0.0 --dtype bf16
  lookaside-serve --backbone random:test_vit --no-warmup       # tiny offline backbone (tests)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lookaside-serve",
        description="Serve Lookaside adapters over HTTP (web page at /, API docs at /docs).\n"
        "Every option is also read from its LOOKASIDE_<NAME> environment variable and from .env;\n"
        "an option given here wins.",
        epilog=_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    # One option per ServiceSettings field, help from its docstring: a new setting appears here
    # without editing this file.
    for name, field in ServiceSettings.model_fields.items():
        flags = ["--" + name.replace("_", "-"), *ALIASES.get(name, ())]
        env = f"LOOKASIDE_{name.upper()}"
        if name in REFUSED_FLAGS:
            why = f"not accepted (visible to every local user): use --{flags[0][2:]}-file or {env}"
            parser.add_argument(*flags, dest=name, default=None, metavar="TOKEN", help=why)
            continue
        default = field.get_default(call_default_factory=True)
        help_text = with_default(field.description or "", default, env)
        if field.annotation is bool:  # a switch: ``--warmup`` alone means true
            action: Any = argparse.BooleanOptionalAction if default else "store_const"
            extra: dict[str, Any] = {} if default else {"const": True}
            parser.add_argument(
                *flags, dest=name, default=None, action=action, help=help_text, **extra
            )
            continue
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        parser.add_argument(
            *flags,
            dest=name,
            default=None,
            choices=choices,
            metavar=_metavar(name, field.annotation, choices),
            help=help_text,
        )
    return parser


def _metavar(name: str, annotation: Any, choices: tuple[Any, ...] | None) -> str:
    """``{cpu,cuda}`` for a choice, else a word saying what to type."""
    if choices:
        return "{" + ",".join(str(c) for c in choices) + "}"
    if name == "pinned":
        return "NAME,..."
    if name.endswith(("_s", "_seconds")):
        return "SECONDS"
    if name.endswith("_ms"):
        return "MS"
    if name.endswith("_bytes"):
        return "BYTES"
    text = str(annotation)
    if "Path" in text:
        return "FILE" if name.endswith("_file") else "DIR"
    if "int" in text or "float" in text:
        return "N"
    return name.rsplit("_", 1)[-1].upper()


def uvicorn_config(app: ASGIApp, settings: ServiceSettings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn config of ``settings``: h11 with the header timeout, the keep-alive timeout,
    the connection cap and the header size bound; WebSockets (``/stream``) with the frame size
    bound, no compression and keep-alive pings (``overrides``: e.g. ``port=0`` in tests)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "lifespan": "on",
        "http": bounded_h11(
            header_timeout_s=settings.header_timeout_s,
            keep_alive_timeout_s=settings.keep_alive_timeout_s,
            retry_after_s=settings.retry_after_s,
        ),
        # whole seconds here; the protocol above applies keep_alive_timeout_s exactly
        "timeout_keep_alive": max(math.ceil(settings.keep_alive_timeout_s), 1),
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "timeout_graceful_shutdown": max(int(settings.request_timeout_s), 1),
        # GET /stream: uvicorn's sans-I/O websockets protocol, closing with 1001 at shutdown
        # (service.stream.ws_protocol); it reads one message at a time, so a connection holds at
        # most one unread message of ws_max_size bytes (ws_max_queue bounds the same for the
        # legacy implementation). No compression: a small deflated frame cannot inflate to a
        # large one. Pings find dead peers (a NAT that dropped the connection) within 40 s.
        "ws": GoingAwayWebSockets,
        "ws_max_size": settings.stream_max_frame_bytes,
        "ws_max_queue": 1,
        "ws_per_message_deflate": False,
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


class _Server(uvicorn.Server):
    """uvicorn's server, minus its re-raise of the signals it handled.

    uvicorn re-raises each signal it caught with ``signal.raise_signal`` inside the running event
    loop after shutting down. There asyncio's own SIGINT handler turns the first into a
    cancellation of the main task and a second one (a second Ctrl-C, or the terminal's SIGINT plus
    the one ``make demo`` forwards) into a KeyboardInterrupt in the middle of the lifespan task:
    the ``CancelledError`` ... ``KeyboardInterrupt`` tracebacks printed after a clean shutdown.
    The exit status comes from :attr:`interrupted` instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if self.force_exit and not self.lifespan.shutdown_event.is_set():
            # A second Ctrl-C stops the wait for open connections; uvicorn would also skip the
            # app's shutdown, leaving the lifespan task to be cancelled (and logged with a
            # traceback) as the loop closes. The engine's drain is bounded: run it anyway.
            await self.lifespan.shutdown()

    @property
    def interrupted(self) -> bool:
        """Whether Ctrl-C (SIGINT) stopped it."""
        return signal.SIGINT in self._captured_signals


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, build the settings, print the URL, run uvicorn until stopped (Ctrl-C or
    SIGTERM: uvicorn drains, then one log line, no traceback; Ctrl-C exits 130)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the server runs (loading, binding)
        print("lookaside-serve: interrupted (Ctrl-C)", file=sys.stderr)  # noqa: T201
        return 130


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    for name, why in REFUSED_FLAGS.items():
        if name in overrides:
            print(f"lookaside-serve: --{name.replace('_', '-')} is refused: {why}", file=sys.stderr)  # noqa: T201
            return 2
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as exc:
        problems = validation_lines(exc)
        text = problems[0] if len(problems) == 1 else "\n  ".join(["invalid settings:", *problems])
        print(f"lookaside-serve: {text}", file=sys.stderr)  # noqa: T201
        return 2
    service_logging.configure(settings.log_format, settings.log_level)
    if settings.ray:  # imported only then: the one-process server does not need Ray
        from service.ray.app import serve_forever

        return serve_forever(settings)
    try:  # offline and not cached: one sentence now, not a minute of hub retries then a traceback
        check_available(settings.backbone)
    except LookasideError as exc:
        print(f"lookaside-serve: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    config = uvicorn_config(create_app(settings), settings)
    # Bind first, so the printed URL has the real port (``--port 0``: the one the OS picked).
    sock = config.bind_socket()
    url = settings.model_copy(update={"port": int(sock.getsockname()[1])}).url
    print(  # noqa: T201
        f"Lookaside serving on {url} with backbone {settings.backbone} "
        f"(web page: {url}/ , API docs: {url}/docs, ready: {url}/readyz)",
        flush=True,
    )
    server = _Server(config)
    main_thread = threading.current_thread() is threading.main_thread()
    # Around the run, SIGINT only counts (uvicorn's handler): asyncio then installs no handler of
    # its own, and a Ctrl-C after uvicorn restores this one cannot become a KeyboardInterrupt or
    # a cancellation of the finished main task (the window the tracebacks came through).
    previous = signal.signal(signal.SIGINT, server.handle_exit) if main_thread else None
    server.run(sockets=[sock])
    if main_thread:
        # Interrupted: ignore further Ctrl-Cs to the end (Python resets a handler of its own to
        # the default as it finalises, where one would kill the process, status -2, not 130).
        signal.signal(signal.SIGINT, signal.SIG_IGN if server.interrupted else previous)
    if server.interrupted:
        log.info("interrupted (SIGINT): shut down cleanly")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
