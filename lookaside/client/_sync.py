""":class:`Client`: the blocking client (one ``httpx.Client``, reused for every call)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx

from lookaside.client import _core
from lookaside.client import models as m
from lookaside.client._core import Call, Media, Model


class Client:
    """Blocking client of a Lookaside server; use it as a context manager (or call :meth:`close`).

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000``.
        token: the admin token for upload, activate, rollback and delete; default
            ``$LOOKASIDE_ADMIN_TOKEN``, else the file ``$LOOKASIDE_ADMIN_TOKEN_FILE`` names (read
            at the first admin call).
        timeout: seconds for each call: to connect, between bytes, and for the whole answer.
        retries: times a call refused with 429 or 503 is sent again after the server's
            ``Retry-After`` (0, the default: never; at most 5; a wait over 30 s is not waited).
        max_response_bytes: largest answer read (64 MiB); a larger one raises InvalidResponse.
        transport: an ``httpx`` transport (tests, proxies, Unix sockets).

    Raises (every method): :class:`~lookaside.client.ApiError` or a subclass for an error answer,
    with the server's ``detail``; :class:`~lookaside.client.ConnectionFailed` without an answer;
    :class:`~lookaside.client.InvalidResponse` for an answer over the limit or not the schema.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = _core.DEFAULT_TIMEOUT_S,
        retries: int = 0,
        max_response_bytes: int = _core.MAX_RESPONSE_BYTES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._s = _core.Settings(base_url, token, timeout, retries, max_response_bytes)
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the API ----------------------------------------------------------------------------------
    def info(self) -> m.Info:
        """What the server runs: version, backbone ``name@fingerprint``, device, dtype, engine."""
        return self._send(_core.info())

    def classify(
        self, clip: Media, adapter: str | Sequence[str], *, top_k: int | None = None
    ) -> m.ClassifyResponse:
        """Top-k labels of ``clip`` (path, bytes or binary file) for each adapter named
        (``name``, ``name@version``, a comma list or a sequence), in the order named."""
        return self._send(_core.classify(clip, adapter, top_k))

    def av_event(
        self, video: Media, adapter: str, *, audio: Media | None = None
    ) -> m.AvEventResponse:
        """Every second's label and the events of ``video`` (its own sound, or ``audio``)."""
        return self._send(_core.av_event(video, adapter, audio))

    def adapters(self, *, page_size: int = _core.PAGE_SIZE) -> list[m.AdapterSummary]:
        """Every adapter, sorted by name (all pages, at most :data:`~._core.MAX_PAGES`)."""
        out: list[m.AdapterSummary] = []
        seen: set[str] = set()
        cursor: str | None = None
        while True:
            page = self._send(_core.adapters_page(cursor, page_size))
            out.extend(page.adapters)
            cursor = _core.next_cursor(page, seen, self._s.base_url)
            if cursor is None:
                return out

    def adapter(self, name: str) -> m.AdapterInfo:
        """One adapter: every version, its state, residency and request counts."""
        return self._send(_core.adapter(name))

    def upload(
        self, checkpoint_dir: str | os.PathLike[str], *, activate: bool = False
    ) -> m.UploadResult:
        """Validate the checkpoint directory here, then store it as a new version (the server
        assigns it; ``created`` False: identical content was stored already)."""
        return self._send(_core.upload(checkpoint_dir, activate))

    def activate(self, name: str, version: int) -> m.ActivateResult:
        """Make a stored version live (loaded first, then switched)."""
        return self._send(_core.activate(name, version))

    def rollback(self, name: str) -> m.ActivateResult:
        """Activate the newest stored version older than the active one."""
        return self.activate(name, _core.rollback_version(self.adapter(name)))

    def delete(
        self, name: str, version: int | None = None, *, force: bool = False
    ) -> m.DeleteResult:
        """Delete one version (``force``: even the active one, the newest other takes over), or
        with ``version`` None the adapter and all its versions."""
        return self._send(_core.delete(name, version, force))

    # -- sending ----------------------------------------------------------------------------------
    def _send(self, call: Call[Model]) -> Model:
        url = self._s.url(call)
        attempt = 0
        while True:
            status, headers, body, phrase = self._exchange(call, url)
            delay = _core.retry_delay(call, status, headers, attempt, self._s.retries)
            if delay is None:
                return _core.parse(call, url, status, headers, body, phrase)
            attempt += 1
            time.sleep(delay)

    def _exchange(self, call: Call[Any], url: str) -> tuple[int, httpx.Headers, bytes, str]:
        headers = self._s.headers(call)
        try:
            with (
                call.body() as kwargs,
                self._http.stream(call.method, url, headers=headers, **kwargs) as r,
            ):
                reader = _core.Reader(url, self._s, r.headers)
                for chunk in r.iter_bytes():
                    reader.add(chunk)
                return r.status_code, r.headers, reader.body(), r.reason_phrase
        except httpx.HTTPError as exc:
            raise _core.connection_failed(call, url, self._s.timeout, exc) from None
