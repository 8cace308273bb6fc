""":class:`AsyncClient`: :class:`~lookaside.client.Client`'s methods, awaitable (one
``httpx.AsyncClient``, reused for every call; request building is shared in ``_core``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx

from lookaside.client import _core
from lookaside.client import models as m
from lookaside.client._core import Call, Media, Model


class AsyncClient:
    """Async client of a Lookaside server; ``async with`` it (or await :meth:`aclose`). Same
    arguments, methods and errors as :class:`~lookaside.client.Client`, each method awaitable.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = _core.DEFAULT_TIMEOUT_S,
        retries: int = 0,
        max_response_bytes: int = _core.MAX_RESPONSE_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._s = _core.Settings(base_url, token, timeout, retries, max_response_bytes)
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=False)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the API ----------------------------------------------------------------------------------
    async def info(self) -> m.Info:
        """What the server runs: version, backbone ``name@fingerprint``, device, dtype, engine."""
        return await self._send(_core.info())

    async def classify(
        self, clip: Media, adapter: str | Sequence[str], *, top_k: int | None = None
    ) -> m.ClassifyResponse:
        """Top-k labels of ``clip`` (path, bytes or binary file) for each adapter named
        (``name``, ``name@version``, a comma list or a sequence), in the order named."""
        return await self._send(_core.classify(clip, adapter, top_k))

    async def av_event(
        self, video: Media, adapter: str, *, audio: Media | None = None
    ) -> m.AvEventResponse:
        """Every second's label and the events of ``video`` (its own sound, or ``audio``)."""
        return await self._send(_core.av_event(video, adapter, audio))

    async def adapters(self, *, page_size: int = _core.PAGE_SIZE) -> list[m.AdapterSummary]:
        """Every adapter, sorted by name (all pages, at most :data:`~._core.MAX_PAGES`)."""
        out: list[m.AdapterSummary] = []
        seen: set[str] = set()
        cursor: str | None = None
        while True:
            page = await self._send(_core.adapters_page(cursor, page_size))
            out.extend(page.adapters)
            cursor = _core.next_cursor(page, seen, self._s.base_url)
            if cursor is None:
                return out

    async def adapter(self, name: str) -> m.AdapterInfo:
        """One adapter: every version, its state, residency and request counts."""
        return await self._send(_core.adapter(name))

    async def upload(
        self, checkpoint_dir: str | os.PathLike[str], *, activate: bool = False
    ) -> m.UploadResult:
        """Validate the checkpoint directory here, then store it as a new version (the server
        assigns it; ``created`` False: identical content was stored already)."""
        return await self._send(_core.upload(checkpoint_dir, activate))

    async def activate(self, name: str, version: int) -> m.ActivateResult:
        """Make a stored version live (loaded first, then switched)."""
        return await self._send(_core.activate(name, version))

    async def rollback(self, name: str) -> m.ActivateResult:
        """Activate the newest stored version older than the active one."""
        return await self.activate(name, _core.rollback_version(await self.adapter(name)))

    async def delete(
        self, name: str, version: int | None = None, *, force: bool = False
    ) -> m.DeleteResult:
        """Delete one version (``force``: even the active one, the newest other takes over), or
        with ``version`` None the adapter and all its versions."""
        return await self._send(_core.delete(name, version, force))

    # -- sending ----------------------------------------------------------------------------------
    async def _send(self, call: Call[Model]) -> Model:
        url = self._s.url(call)
        attempt = 0
        while True:
            status, headers, body, phrase = await self._exchange(call, url)
            delay = _core.retry_delay(call, status, headers, attempt, self._s.retries)
            if delay is None:
                return _core.parse(call, url, status, headers, body, phrase)
            attempt += 1
            await asyncio.sleep(delay)

    async def _exchange(self, call: Call[Any], url: str) -> tuple[int, httpx.Headers, bytes, str]:
        headers = self._s.headers(call)
        try:
            with call.body() as kwargs:
                async with self._http.stream(call.method, url, headers=headers, **kwargs) as r:
                    reader = _core.Reader(url, self._s, r.headers)
                    async for chunk in r.aiter_bytes():
                        reader.add(chunk)
                    return r.status_code, r.headers, reader.body(), r.reason_phrase
        except httpx.HTTPError as exc:
            raise _core.connection_failed(call, url, self._s.timeout, exc) from None
