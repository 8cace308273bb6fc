"""Upload a checkpoint directory to a running Lookaside server (``POST {url}/adapters``).

Multipart with two files, ``manifest`` (manifest.json) and ``weights`` (adapter.safetensors), the
admin token as ``Authorization: Bearer <token>``, ``?activate=true`` to serve it at once. The
server assigns the version; its JSON answer is returned. A refusal raises :class:`PushError` with
the server's own ``detail`` message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from lookaside.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, load_checkpoint
from lookaside.errors import LookasideError

TOKEN_ENV = "LOOKASIDE_ADMIN_TOKEN"
TOKEN_FILE_ENV = "LOOKASIDE_ADMIN_TOKEN_FILE"
_MAX_TOKEN_FILE_BYTES = 4096


class PushError(LookasideError):
    """The upload failed: no server, no token, or the server refused it (its message)."""


def read_token_file(path: Path) -> str:
    """The admin token stored in ``path`` (whitespace stripped), read with a size bound."""
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise PushError(f"cannot read the token file {str(path)!r}: {exc.strerror}") from None
    token = data.decode("utf-8", errors="replace").strip()
    if len(data) > _MAX_TOKEN_FILE_BYTES or not token:
        raise PushError(f"the token file {str(path)!r} is empty or over 4096 bytes: not a token")
    return token


def push(
    directory: Path,
    url: str,
    *,
    token: str | None = None,
    token_file: Path | None = None,
    activate: bool = False,
    timeout: float = 120.0,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """Validate ``directory`` locally, upload it, return the server's JSON answer.

    The token comes from ``token``, else ``token_file``, else ``$LOOKASIDE_ADMIN_TOKEN``, else the
    file ``$LOOKASIDE_ADMIN_TOKEN_FILE`` names (a file keeps it out of ``ps`` and shell history).
    """
    env_file = os.environ.get(TOKEN_FILE_ENV)
    token = (
        token
        or (read_token_file(token_file) if token_file is not None else None)
        or os.environ.get(TOKEN_ENV)
        or (read_token_file(Path(env_file)) if env_file else None)
    )
    if not token:
        raise PushError(
            f"no admin token: pass --token-file FILE (or --token), or set {TOKEN_ENV} or "
            f"{TOKEN_FILE_ENV}"
        )
    load_checkpoint(directory)  # refuse a broken checkpoint before sending megabytes
    files = {
        "manifest": (MANIFEST_FILE, (directory / MANIFEST_FILE).read_bytes(), "application/json"),
        "weights": (
            WEIGHTS_FILE,
            (directory / WEIGHTS_FILE).read_bytes(),
            "application/octet-stream",
        ),
    }
    params = {"activate": "true"} if activate else {}
    endpoint = url.rstrip("/") + "/adapters"
    with httpx.Client(timeout=timeout, transport=transport) as client:
        try:
            response = client.post(
                endpoint, files=files, params=params, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            raise PushError(f"could not reach {endpoint}: {exc}") from None
        if response.status_code >= 400:
            raise PushError(
                f"server refused the upload ({response.status_code}): {_detail(response)}"
            )
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            raise PushError(f"{endpoint} answered {response.status_code} without JSON") from None
        name = body.get("name")
        if name is not None:  # what the server serves now (activation may be a separate step)
            info = client.get(f"{endpoint}/{name}")
            if info.status_code == 200:
                body["serving"] = info.json().get("active")
    return body


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if detail is None:
        return response.text[:500] or response.reason_phrase
    return detail if isinstance(detail, str) else str(detail)


def describe(answer: dict[str, Any]) -> str:
    """One line saying what the server now serves, from its answer."""
    name = answer.get("name", "?")
    version = answer.get("version", "?")
    serving = answer.get("serving")
    if serving is None and answer.get("active") is True:
        serving = version
    text = f"uploaded {name}@{version}"
    if answer.get("created") is False:
        text += " (identical content: already stored as this version)"
    if serving is None:
        text += f"; no version of {name} is active (activate it with --activate)"
    else:
        text += f"; the server now serves {name}@{serving}"
    return text
