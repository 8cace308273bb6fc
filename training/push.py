"""Upload a checkpoint directory to a running Lookaside server (``lookaside-train push``).

Through :class:`lookaside.client.Client`: the checkpoint is validated here, then the server's
backbone (``GET /info``) is compared with the one the manifest was made for, so a checkpoint the
server would refuse (409) is refused before any byte is sent, naming both backbones; ``force``
skips that comparison (the server still checks). Then ``POST /adapters`` (``?activate=true`` to
serve it at once) with the admin token. A refusal raises :class:`PushError` with the server's own
``detail`` message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from lookaside.checkpoint import AdapterManifest, load_manifest
from lookaside.client import ApiError, Client, ClientError, NotFound, read_token_file
from lookaside.client.models import Info, UploadResult
from lookaside.errors import LookasideError

TOKEN_ENV = "LOOKASIDE_ADMIN_TOKEN"
TOKEN_FILE_ENV = "LOOKASIDE_ADMIN_TOKEN_FILE"


class PushError(LookasideError):
    """The upload failed: no server, no token, another backbone, or the server refused it."""


@dataclass(frozen=True)
class Pushed:
    """The server's answer to the upload, and the version it serves afterwards (None: none)."""

    upload: UploadResult
    serving: int | None


def push(
    directory: Path,
    url: str,
    *,
    token: str | None = None,
    token_file: Path | None = None,
    activate: bool = False,
    force: bool = False,
    timeout: float = 120.0,
    transport: httpx.BaseTransport | None = None,
) -> Pushed:
    """Validate ``directory`` locally, check the server's backbone, upload it.

    The token comes from ``token``, else ``token_file``, else ``$LOOKASIDE_ADMIN_TOKEN``, else the
    file ``$LOOKASIDE_ADMIN_TOKEN_FILE`` names (a file keeps it out of ``ps`` and shell history).
    """
    token = _token(token, token_file)
    manifest = load_manifest(directory)
    with Client(url, token=token, timeout=timeout, transport=transport) as client:
        try:
            if not force:
                _same_backbone(manifest, _info(client, url), url)
            answer = client.upload(directory, activate=activate)
            serving = _serving(client, answer)
        except ApiError as exc:
            status = exc.status_code
            raise PushError(f"server refused the upload ({status}): {exc.detail}") from None
        except ClientError as exc:
            raise PushError(str(exc)) from None
    return Pushed(answer, serving)


def _token(token: str | None, token_file: Path | None) -> str:
    try:
        env_file = os.environ.get(TOKEN_FILE_ENV)
        found = (
            token
            or (read_token_file(token_file) if token_file is not None else None)
            or os.environ.get(TOKEN_ENV)
            or (read_token_file(Path(env_file)) if env_file else None)
        )
    except ClientError as exc:
        raise PushError(str(exc)) from None
    if not found:
        raise PushError(
            f"no admin token: pass --token-file FILE (or --token), or set {TOKEN_ENV} or "
            f"{TOKEN_FILE_ENV}"
        )
    return found


def _info(client: Client, url: str) -> Info | None:
    """The server's build info; None from a server older than ``GET /info`` (the upload then
    meets the server's own backbone check)."""
    try:
        return client.info()
    except NotFound:
        return None
    except ApiError as exc:  # e.g. 503 while the server is still loading its backbone
        raise PushError(
            f"the server at {url} did not say which backbone it runs ({exc.status_code}): "
            f"{exc.detail}; nothing was uploaded (retry, or pass --force to skip this check)"
        ) from None


def _serving(client: Client, answer: UploadResult) -> int | None:
    """The version the server serves now (activation may have been a separate step)."""
    try:
        return client.adapter(answer.name).active
    except ClientError:  # stored all the same: say what the upload's answer knows
        return answer.version if answer.active else None


def _same_backbone(manifest: AdapterManifest, info: Info | None, url: str) -> None:
    """Refuse, naming both backbones, a checkpoint made for another backbone than the server's."""
    ref = manifest.backbone
    if info is None or info.backbone_fingerprint == ref.fingerprint:
        return
    raise PushError(
        f"checkpoint {manifest.id} was made for backbone {ref.name}@{ref.fingerprint} (source "
        f"{ref.source}); the server at {url} runs {info.backbone}. Push it to a server running "
        f"{ref.name}@{ref.fingerprint}, or retrain it on the server's backbone; nothing was "
        "uploaded (--force skips this check; the server checks again)"
    )


def describe(pushed: Pushed) -> str:
    """One line saying what the server now serves."""
    answer = pushed.upload
    text = f"uploaded {answer.name}@{answer.version}"
    if not answer.created:
        text += " (identical content: already stored as this version)"
    if pushed.serving is None:
        text += f"; no version of {answer.name} is active (activate it with --activate)"
    else:
        text += f"; the server now serves {answer.name}@{pushed.serving}"
    return text
