"""``lookaside-serve`` / ``python -m service``: settings from the environment (``LOOKASIDE_*``,
``.env``) and the command line, then uvicorn on ``host:port``; prints the URL to use (with the
port the OS picked for ``--port 0``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from service import logging as service_logging
from service.app import create_app
from service.settings import ServiceSettings


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
        parser.add_argument(flag, dest=name, default=None, help=help_text)
    parser.add_argument("--pinned", dest="pinned", default=None, help="comma-separated names")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, build the settings, print the URL, run uvicorn until stopped."""
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as exc:
        print(f"lookaside-serve: invalid settings:\n{exc}", file=sys.stderr)  # noqa: T201
        return 2
    service_logging.configure(settings.log_format, settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=max(int(settings.request_timeout_s), 1),
    )
    # Bind first, so the printed URL has the real port (``--port 0``: the one the OS picked).
    sock = config.bind_socket()
    url = settings.model_copy(update={"port": int(sock.getsockname()[1])}).url
    print(  # noqa: T201
        f"Lookaside serving on {url} (docs: {url}/docs, ready: {url}/readyz)", flush=True
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
