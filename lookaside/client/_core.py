"""What the sync and async clients share: each API call as a :class:`Call` (method, path, query,
form, files, expected answer), the admin token, the retry policy and the answer's checks. The two
clients only differ in how they send a :class:`Call` and wait, so nothing here does I/O on the
network.
"""

from __future__ import annotations

import json
import mimetypes
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from lookaside import token_file
from lookaside.client import models as m
from lookaside.client.errors import (
    ClientError,
    ConnectionFailed,
    InvalidResponse,
    api_error,
    parse_retry_after,
)
from lookaside.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)
Media = str | os.PathLike[str] | bytes | IO[bytes]
"""A clip or video: a path, its bytes, or a binary file object (sent whole, from its start)."""

TOKEN_ENV = "LOOKASIDE_ADMIN_TOKEN"
TOKEN_FILE_ENV = "LOOKASIDE_ADMIN_TOKEN_FILE"
DEFAULT_TIMEOUT_S = 60.0
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""Largest answer read (a 1000-adapter listing is ~300 KB; a classify answer a few KB)."""
MAX_RETRIES = 5
MAX_RETRY_WAIT_S = 30.0
"""A ``Retry-After`` longer than this is not waited for: the error is raised at once."""
PAGE_SIZE = 1000
"""Adapters per ``GET /adapters`` page (the server's largest)."""
MAX_PAGES = 1000
"""Pages :meth:`Client.adapters` follows at most (a million adapters at the largest page)."""
RETRY_STATUSES = frozenset({429, 503})


def read_token_file(path: Path) -> str:
    """The admin token stored in ``path`` (:func:`lookaside.token_file.read_token_file`), its
    refusal raised as the client's own :class:`ClientError`."""
    try:
        return token_file.read_token_file(path)
    except ConfigError as exc:
        raise ClientError(str(exc)) from None


def env_token() -> str | None:
    """``$LOOKASIDE_ADMIN_TOKEN``, else the content of the file ``$LOOKASIDE_ADMIN_TOKEN_FILE``
    names (a file keeps the token out of ``ps`` and shell history), else None."""
    token = os.environ.get(TOKEN_ENV)
    if token:
        return token
    path = os.environ.get(TOKEN_FILE_ENV)
    return read_token_file(Path(path)) if path else None


@dataclass(frozen=True)
class Part:
    """One file of a multipart body."""

    field: str
    source: Media
    filename: str
    content_type: str
    replayable: bool = True
    """False for a file object that cannot seek back to its start (no retry then)."""


@dataclass(frozen=True)
class Call(Generic[Model]):
    """One request and the model its answer must fit."""

    method: str
    path: str
    model: type[Model]
    params: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)
    json: dict[str, Any] | None = None
    parts: tuple[Part, ...] = ()
    admin: bool = False

    @property
    def replayable(self) -> bool:
        """Whether the body can be sent again (a file object only if it can seek back)."""
        return all(p.replayable for p in self.parts)

    @contextmanager
    def body(self) -> Iterator[dict[str, Any]]:
        """httpx's body arguments; a path is opened (and streamed) only while it is sent."""
        kwargs: dict[str, Any] = {"params": self.params}
        if self.json is not None:
            kwargs["json"] = self.json
        with ExitStack() as stack:
            if self.parts:
                files: dict[str, Any] = {}
                for p in self.parts:
                    content: bytes | IO[bytes]
                    if isinstance(p.source, bytes):
                        content = p.source
                    elif isinstance(p.source, str | os.PathLike):
                        content = stack.enter_context(Path(p.source).open("rb"))
                    else:  # httpx seeks it to its start, if it can, each time it is sent
                        content = p.source
                    files[p.field] = (p.filename, content, p.content_type)
                kwargs["files"] = files
                kwargs["data"] = self.data
            yield kwargs


def part(name: str, source: Media, default_name: str) -> Part:
    """A file part for ``source``, named after its path (or file object's name) when it has one."""
    if isinstance(source, bytes | bytearray):
        return Part(name, bytes(source), default_name, "application/octet-stream")
    if isinstance(source, str | os.PathLike):
        filename = Path(source).name
    else:
        filename = Path(str(getattr(source, "name", "") or default_name)).name
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    replayable = isinstance(source, str | os.PathLike) or source.seekable()
    return Part(name, source, filename or default_name, content_type, replayable)


def adapter_refs(adapter: str | Sequence[str]) -> str:
    """``name``, ``name@version`` or several of them as the API's comma-separated list."""
    refs = [adapter] if isinstance(adapter, str) else list(adapter)
    joined = ",".join(r.strip() for r in refs if r.strip())
    if not joined:
        raise ClientError("name an adapter: 'name', 'name@version', or a list of them")
    return joined


def _name(name: str) -> str:
    return quote(name, safe="")


# -- the calls ------------------------------------------------------------------------------------
def info() -> Call[m.Info]:
    return Call("GET", "/info", m.Info)


def classify(
    clip: Media, adapter: str | Sequence[str], top_k: int | None
) -> Call[m.ClassifyResponse]:
    data = {"adapter": adapter_refs(adapter)}
    if top_k is not None:
        data["top_k"] = str(top_k)
    parts = (part("file", clip, "clip"),)
    return Call("POST", "/classify", m.ClassifyResponse, data=data, parts=parts)


def av_event(video: Media, adapter: str, audio: Media | None) -> Call[m.AvEventResponse]:
    parts = [part("video", video, "video")]
    if audio is not None:
        parts.append(part("audio", audio, "audio"))
    data = {"adapter": adapter_refs(adapter)}
    return Call("POST", "/av-event", m.AvEventResponse, data=data, parts=tuple(parts))


def adapters_page(cursor: str | None, page_size: int) -> Call[m.AdapterList]:
    params = {"limit": str(page_size)}
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/adapters", m.AdapterList, params=params)


def adapter(name: str) -> Call[m.AdapterInfo]:
    return Call("GET", f"/adapters/{_name(name)}", m.AdapterInfo)


def upload(checkpoint_dir: str | os.PathLike[str], activate: bool) -> Call[m.UploadResult]:
    """Validated here first (as the server will), so a broken checkpoint is never sent."""
    from lookaside.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, load_checkpoint

    directory = Path(checkpoint_dir)
    load_checkpoint(directory)
    parts = (
        Part("manifest", directory / MANIFEST_FILE, MANIFEST_FILE, "application/json"),
        Part("weights", directory / WEIGHTS_FILE, WEIGHTS_FILE, "application/octet-stream"),
    )
    params = {"activate": "true"} if activate else {}
    return Call("POST", "/adapters", m.UploadResult, params=params, parts=parts, admin=True)


def activate(name: str, version: int) -> Call[m.ActivateResult]:
    path = f"/adapters/{_name(name)}/activate"
    return Call("POST", path, m.ActivateResult, json={"version": version}, admin=True)


def rollback_version(current: m.AdapterInfo) -> int:
    """The newest stored version older than the active one (what a rollback activates)."""
    if current.active is None:
        raise ClientError(f"adapter {current.name!r} has no active version to roll back from")
    older = [v.version for v in current.versions if v.version < current.active]
    if not older:
        raise ClientError(
            f"adapter {current.name!r} has no version older than the active "
            f"{current.name}@{current.active} to roll back to"
        )
    return max(older)


def delete(name: str, version: int | None, force: bool) -> Call[m.DeleteResult]:
    if version is None:
        return Call("DELETE", f"/adapters/{_name(name)}", m.DeleteResult, admin=True)
    params = {"force": "true"} if force else {}
    path = f"/adapters/{_name(name)}/versions/{int(version)}"
    return Call("DELETE", path, m.DeleteResult, params=params, admin=True)


# -- answers --------------------------------------------------------------------------------------
def next_cursor(page: m.AdapterList, seen: set[str], url: str) -> str | None:
    """The cursor of the page after ``page``; refuses a listing that loops or never ends."""
    cursor = page.next_cursor
    if cursor is None:
        return None
    if cursor in seen or len(seen) >= MAX_PAGES:
        raise InvalidResponse(
            f"{url}/adapters: the listing did not end within {MAX_PAGES} pages or repeated a "
            "cursor; the client stopped following it"
        )
    seen.add(cursor)
    return cursor


class Reader:
    """Collects an answer's body within the byte limit and the call's deadline."""

    def __init__(self, url: str, settings: Settings, headers: Mapping[str, str]) -> None:
        self.url, self.limit = url, settings.max_response_bytes
        self.deadline = time.monotonic() + settings.timeout
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            raise InvalidResponse(f"{url} answered {declared} bytes, over the limit {self.limit}")
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise InvalidResponse(f"{self.url} answered more than the limit of {self.limit} bytes")
        if time.monotonic() > self.deadline:
            raise httpx.ReadTimeout("the whole answer took longer than the timeout")
        self.chunks.append(chunk)

    def body(self) -> bytes:
        return b"".join(self.chunks)


def connection_failed(call: Call[Any], url: str, timeout: float, exc: Exception) -> ClientError:
    """What an ``httpx`` error while sending ``call`` is raised as: the URL and why."""
    if isinstance(exc, httpx.TimeoutException):
        why = str(exc) or type(exc).__name__
        return ConnectionFailed(f"{call.method} {url}: no answer within {timeout:g} s ({why})")
    return ConnectionFailed(f"could not reach {url}: {exc or type(exc).__name__}")


def parse(
    call: Call[Model], url: str, status: int, headers: Mapping[str, str], body: bytes, phrase: str
) -> Model:
    """The answer as ``call.model``, or the :class:`ApiError` its status and detail make."""
    if status >= 400:
        raise api_error(status, body, headers, phrase)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidResponse(f"{url} answered {status} with a body that is not JSON") from None
    try:
        return call.model.model_validate(data)
    except ValidationError as exc:
        raise InvalidResponse(
            f"{url} answered {status} with JSON that is not a {call.model.__name__}: "
            f"{exc.error_count()} problem(s), first {exc.errors()[0]['msg']!r} at "
            f"{'.'.join(map(str, exc.errors()[0]['loc']))}"
        ) from None


def retry_delay(
    call: Call[Any], status: int, headers: Mapping[str, str], attempt: int, retries: int
) -> float | None:
    """Seconds to wait before sending ``call`` again, or None to answer now.

    Only 429 and 503 (refused before any work) are retried, at most ``retries`` times, after the
    server's ``Retry-After`` (else 1, 2, 4 ... s); never past :data:`MAX_RETRY_WAIT_S`.
    """
    if status not in RETRY_STATUSES or attempt >= retries or not call.replayable:
        return None
    wait = parse_retry_after(headers.get("retry-after"))
    if wait is None:
        wait = float(2**attempt)
    return wait if wait <= MAX_RETRY_WAIT_S else None


class Settings:
    """The state both clients keep: base URL, timeout, retries, answer limit, admin token."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        timeout: float,
        retries: int,
        max_response_bytes: int,
    ) -> None:
        if not 0 <= retries <= MAX_RETRIES:
            raise ValueError(f"retries must be 0..{MAX_RETRIES}, got {retries}")
        if timeout <= 0 or max_response_bytes <= 0:
            raise ValueError("timeout and max_response_bytes must be positive")
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.retries = retries
        self.max_response_bytes = max_response_bytes
        self._token = token
        self._token_read = token is not None

    def url(self, call: Call[Any]) -> str:
        return self.base_url + call.path

    def headers(self, call: Call[Any]) -> dict[str, str]:
        """``Authorization`` for an admin call when a token is known (else the server says 401,
        or lets it through where it runs without an admin token)."""
        if not call.admin:
            return {}
        if not self._token_read:  # the environment is read at the first admin call only
            self._token = env_token()
            self._token_read = True
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}
