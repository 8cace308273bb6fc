"""The request-body limits of one process, in Ray Serve's HTTP proxy too.

Ray's proxy reads a request's body as it arrives and forwards it to the ingress replica, ahead of
what the app has read. Without a bound there, the app's own refusals come too late: a 1.5 GB body
streamed to ``/classify`` was answered 413 by the app (``max_media_bytes``) within 0.9 s, but the
proxy had meanwhile grown by 300 MB (measured, ``lookaside-serve --ray``, before this module).

So the proxy runs :class:`~service.http_limits.BodyLimits` itself, the same middleware as one
process: the whole-body deadline (``body_timeout_s``) and the budget of body bytes in flight over
all requests (``max_inflight_body_bytes``, per proxy), checked against the declared
``Content-Length`` before a byte is read and counted chunk by chunk for chunked bodies; past
either, the proxy answers 408/413/503 itself and reads no further.

How it gets there: Ray builds a proxy's middlewares when the proxy starts, from the import path
in ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` of the proxy's environment (Ray removed the
``http_options.middlewares`` of older releases). :func:`from_environment` is that callback; it
reads the limits from the node's ``LOOKASIDE_*`` variables. ``lookaside-serve --ray`` sets both
(:func:`proxy_environment`) before it starts a local Ray; on a cluster, set them on every node
before ``ray start`` (the image and docker/rayservice.yaml do; docs/ray.md).
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.types import ASGIApp

from service.http_limits import BodyLimits, InflightBytes
from service.settings import ServiceSettings


class ProxyBodyLimits(BodyLimits):
    """:class:`BodyLimits` built from plain values (Ray pickles the middleware to each proxy)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_inflight_body_bytes: int,
        body_timeout_s: float,
        retry_after_s: int,
    ) -> None:
        super().__init__(
            app,
            budget=InflightBytes(max_inflight_body_bytes),
            body_timeout_s=body_timeout_s,
            retry_after_s=retry_after_s,
        )


CALLBACK = "service.ray.proxy:from_environment"
"""The value of ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` that installs these limits."""


def proxy_middlewares(settings: ServiceSettings) -> list[Middleware]:
    """The middlewares every Ray Serve proxy runs, with ``settings``' limits."""
    return [
        Middleware(
            ProxyBodyLimits,
            max_inflight_body_bytes=settings.max_inflight_body_bytes,
            body_timeout_s=settings.body_timeout_s,
            retry_after_s=settings.retry_after_s,
        )
    ]


def proxy_environment(settings: ServiceSettings) -> dict[str, str]:
    """The variables a node's processes need for its proxy to run ``settings``' body limits."""
    return {
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": CALLBACK,
        "LOOKASIDE_MAX_INFLIGHT_BODY_BYTES": str(settings.max_inflight_body_bytes),
        "LOOKASIDE_BODY_TIMEOUT_S": str(settings.body_timeout_s),
        "LOOKASIDE_RETRY_AFTER_S": str(settings.retry_after_s),
    }


def from_environment() -> list[Middleware]:
    """Ray's proxy callback: the limits from this node's ``LOOKASIDE_*`` variables (no admin
    token needed: the proxy has no admin routes)."""
    return proxy_middlewares(ServiceSettings(allow_no_admin_token=True, admin_token_file=None))
