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
import logging
import math
import signal
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn
from pydantic import ValidationError
from starlette.types import ASGIApp

from service import logging as service_logging
from service.app import create_app
from service.http_limits import bounded_h11
from service.settings import ServiceSettings

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lookaside-serve",
        description="Serve Lookaside adapters over HTTP. Every setting is also read from "
        "LOOKASIDE_<NAME> environment variables and .env; flags win.",
    )
    for name, field in ServiceSettings.model_fields.items():
        if name in ("pinned",):
            continue
        flag = "--" + name.replace("_", "-")
        help_text = (field.description or "").replace("%", "%%")
        if name in REFUSED_FLAGS:
            help_text = "refused: " + REFUSED_FLAGS[name]
        flags = [flag, *ALIASES.get(name, ())]
        if field.annotation is bool:  # ``--warmup`` alone means true; ``--warmup false`` works
            parser.add_argument(
                *flags, dest=name, default=None, nargs="?", const="true", help=help_text
            )
            continue
        parser.add_argument(*flags, dest=name, default=None, help=help_text)
    parser.add_argument("--pinned", dest="pinned", default=None, help="comma-separated names")
    return parser


def uvicorn_config(app: ASGIApp, settings: ServiceSettings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn config of ``settings``: h11 with the header timeout, the keep-alive timeout,
    the connection cap and the header size bound (``overrides``: e.g. ``port=0`` in tests)."""
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
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, build the settings, print the URL, run uvicorn until stopped (Ctrl-C or
    SIGTERM: uvicorn drains, then one log line, no traceback)."""
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    for name, why in REFUSED_FLAGS.items():
        if name in overrides:
            print(f"lookaside-serve: --{name.replace('_', '-')} is refused: {why}", file=sys.stderr)  # noqa: T201
            return 2
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as exc:
        print(f"lookaside-serve: invalid settings:\n{exc}", file=sys.stderr)  # noqa: T201
        return 2
    service_logging.configure(settings.log_format, settings.log_level)
    if settings.ray:  # imported only then: the one-process server does not need Ray
        from service.ray.app import serve_forever

        return serve_forever(settings)
    config = uvicorn_config(create_app(settings), settings)
    # Bind first, so the printed URL has the real port (``--port 0``: the one the OS picked).
    sock = config.bind_socket()
    url = settings.model_copy(update={"port": int(sock.getsockname()[1])}).url
    print(  # noqa: T201
        f"Lookaside serving on {url} (docs: {url}/docs, ready: {url}/readyz)", flush=True
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn has already shut down gracefully; it re-raises SIGINT afterwards so the exit
        # status says "interrupted" -- keep that status, without the traceback.
        interrupted = True
    else:
        # Seen in loaded test runs: the re-raised SIGINT did not surface as KeyboardInterrupt
        # and the process exited 0; uvicorn's record of the signals it handled decides instead.
        interrupted = signal.SIGINT in getattr(server, "_captured_signals", ())
    if interrupted:
        log.info("interrupted (SIGINT): shut down cleanly")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
