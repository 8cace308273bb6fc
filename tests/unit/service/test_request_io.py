"""parse_form keeps multipart parts in memory (the body is bounded and held already), and refuses
a malformed body with 422 and the parser's reason."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.datastructures import UploadFile
from starlette.requests import Request

from lookaside.errors import DeadlineExceeded
from service.errors import BadRequest, RequestTimeout, status_of
from service.request_io import in_pool, parse_form

BOUNDARY = "lookasideboundary"


def _request(body: bytes) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [
            (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    return Request(scope)


def _multipart(data: bytes) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\n".encode()
        + data
        + f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="adapter"\r\n\r\nesc50'
        f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def test_a_large_file_part_stays_in_memory() -> None:
    data = bytes(range(256)) * (3 * 4096)  # 3 MiB: starlette's default spools over 1 MiB
    body = _multipart(data)

    async def parse() -> tuple[bool, bytes, object]:
        form = await parse_form(_request(body), body, max_files=1, max_fields=8)
        try:
            upload = form.get("file")
            assert isinstance(upload, UploadFile)
            rolled = bool(getattr(upload.file, "_rolled", True))
            return rolled, await upload.read(), form.get("adapter")
        finally:
            await form.close()

    rolled, read, adapter = asyncio.run(parse())
    assert not rolled, "the file part was spooled to disk"
    assert read == data
    assert adapter == "esc50"


def test_a_malformed_body_is_a_422_with_the_reason() -> None:
    body = _multipart(b"x")[:-40]  # cut before the closing boundary
    body = body.replace(b'name="file"; ', b"")  # a part without a name

    with pytest.raises(BadRequest, match="malformed multipart body"):
        asyncio.run(parse_form(_request(body), body, max_files=1, max_fields=8))


def test_a_decoder_past_the_deadline_answers_like_the_request_timeout() -> None:
    """The decoder checks the deadline itself (DeadlineExceeded); the client gets the same 504
    as any request timeout, naming the setting, not an internal error."""

    def decode() -> None:
        raise DeadlineExceeded("decoding the video passed the request's deadline after 3 frames")

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            await in_pool(pool, decode, deadline=time.monotonic() + 60)

    with pytest.raises(RequestTimeout) as caught:
        asyncio.run(main())
    assert "after 3 frames" in str(caught.value)
    assert "LOOKASIDE_REQUEST_TIMEOUT_S" in str(caught.value)
    assert status_of(caught.value) == 504
