"""A typed Python client of the Lookaside HTTP API, blocking (:class:`Client`) and async
(:class:`AsyncClient`), with the same methods.

::

    from lookaside.client import Client, NotFound

    with Client("http://127.0.0.1:8000") as lookaside:
        answer = lookaside.classify("clip.wav", "esc50", top_k=3)
        for label in answer.results[0].labels:
            print(label.label, label.score)
        lookaside.upload("runs/esc50/2", activate=True)  # admin: $LOOKASIDE_ADMIN_TOKEN(_FILE)
        lookaside.rollback("esc50")

Answers are pydantic models (:mod:`lookaside.client.models`) mirroring the server's schemas. An
error answer raises :class:`ApiError` carrying the server's ``status_code`` and ``detail``, as a
subclass where a caller acts differently: :class:`Unauthorized` (401/403), :class:`NotFound`,
:class:`Conflict` (409), :class:`PayloadTooLarge` (413), :class:`Overloaded` (429/503, with
``retry_after``). Without an answer: :class:`ConnectionFailed` (naming the URL); an answer over
``max_response_bytes`` or not the expected JSON: :class:`InvalidResponse`. Every call is bounded
by ``timeout``; ``retries=N`` sends a call refused with 429/503 again after ``Retry-After``.

Live streaming (``GET /stream``, a WebSocket): ``lookaside.client.stream.stream`` sends a file, an
array or the microphone and yields the windows as the server answers them (docs/stream-client.md;
the function is not exported here: ``lookaside.client.stream`` names its module); a session the
server closes with an error raises :class:`StreamClosed`.
"""

from __future__ import annotations

from lookaside.client._async import AsyncClient
from lookaside.client._core import read_token_file
from lookaside.client._sync import Client
from lookaside.client.errors import (
    ApiError,
    ClientError,
    Conflict,
    ConnectionFailed,
    InvalidResponse,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
)
from lookaside.client.stream_session import StreamClosed, StreamSession
from lookaside.client.stream_sources import ArraySource, file_source, open_device

__all__ = [
    "ApiError",
    "ArraySource",
    "AsyncClient",
    "Client",
    "ClientError",
    "Conflict",
    "ConnectionFailed",
    "InvalidResponse",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "StreamClosed",
    "StreamSession",
    "Unauthorized",
    "file_source",
    "open_device",
    "read_token_file",
]
