"""Request plumbing the media routes share: bounded body reads, multipart parsing from memory,
work in the featurize pool under the request's deadline, and waiting for engine results.

The body is read once, bounded (413 as soon as it passes the limit), and the multipart form is
parsed from those bytes in memory (:func:`parse_form` keeps every part in memory instead of
spooling large ones to disk and reading them back), so every route refuses an oversized or
malformed upload the same way with the same words.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from fastapi import Request
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from torch import Tensor

from lookaside.errors import DeadlineExceeded
from service.errors import BadRequest, PayloadTooLarge, RequestTimeout

T = TypeVar("T")

MULTIPART_SLACK = 64 * 1024
"""Bytes of multipart headers and boundaries allowed around the files."""
TIMEOUT_MESSAGE = (
    "the request was not answered within the request timeout; retry, send fewer "
    "adapters per request, or raise LOOKASIDE_REQUEST_TIMEOUT_S"
)


async def read_body(request: Request, allowed: int, *, why: str, advice: str) -> bytes:
    """The body, refused with 413 as soon as it passes ``allowed`` bytes.

    ``why`` says how ``allowed`` follows from the documented settings (e.g. the per-file limit
    plus the multipart framing), so the refusal names the limit a user can look up and raise,
    not an unexplained sum; ``advice`` says what to do.
    """

    def refuse(size: str) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the body is {size} bytes, over the {allowed} bytes allowed ({why}); {advice}"
        )

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > allowed:
        raise refuse(declared)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > allowed:
            raise refuse(f"more than {allowed}")
        chunks.append(chunk)
    return b"".join(chunks)


def media_allowance(limit: int, files: int = 1) -> tuple[int, str]:
    """(bytes allowed, why) for a multipart body of ``files`` media files of ``limit`` each."""
    why = f"LOOKASIDE_MAX_MEDIA_BYTES = {limit} per file"
    if files > 1:
        why += f", {files} files"
    why += f", plus {MULTIPART_SLACK // 1024} KiB of multipart framing"
    return files * limit + MULTIPART_SLACK, why


async def parse_form(request: Request, body: bytes, *, max_files: int, max_fields: int) -> FormData:
    """The multipart form of an already-read ``body`` (malformed: 422 with the parser's reason).

    The parts stay in memory: the body is held already (bounded by its route), so starlette's
    parser is told to spool nothing to disk (its default writes file parts over 1 MiB to a
    temporary file and reads them back). Call it for ``multipart/form-data`` bodies only.
    """

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=max_files, max_fields=max_fields)
    parser.spool_max_size = max(len(body), 1)  # a part is never larger than the body it is in
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from None


async def in_pool(pool: Any, fn: Callable[[], T], *, deadline: float | None = None) -> T:
    """Run ``fn`` in the featurize pool with the request's context (its log lines keep the id).

    With ``deadline`` (``time.monotonic()``), waiting in the pool's queue counts against the
    request's timeout: past it the request answers 504 and its work is dropped if it has not
    started, so an overloaded pool never works for clients that already gave up.
    """
    ctx = contextvars.copy_context()
    loop = asyncio.get_running_loop()

    def run() -> T:
        if deadline is not None and time.monotonic() > deadline:
            raise RequestTimeout(TIMEOUT_MESSAGE)  # dequeued too late: skip the work
        try:
            return ctx.run(fn)
        except DeadlineExceeded as exc:  # the decoder saw the deadline pass: the same 504
            raise RequestTimeout(f"{exc}; {TIMEOUT_MESSAGE}") from None

    result: Awaitable[T] = loop.run_in_executor(pool, run)
    if deadline is None:
        return await result
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # lands as the result arrives (a client gone at that moment would leave the request
        # running on)
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
            return await result
    except TimeoutError:
        raise RequestTimeout(TIMEOUT_MESSAGE) from None


async def gather(futures: list[Future[Tensor]], timeout: float) -> list[Tensor]:
    wrapped = [asyncio.wrap_future(f) for f in futures]
    try:
        async with asyncio.timeout(max(timeout, 0.0)):  # not wait_for: see in_pool
            return list(await asyncio.gather(*wrapped))
    except TimeoutError:
        raise RequestTimeout(TIMEOUT_MESSAGE) from None
