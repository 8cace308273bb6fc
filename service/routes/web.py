"""The web page: static files served by FastAPI (no front-end build step), and the example clips
of ``settings.examples_dir`` the page offers to try with one click."""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from service.deps import SettingsDep

STATIC = Path(__file__).resolve().parent.parent / "static"

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac"})
VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".mkv", ".mov", ".avi"})
MAX_EXAMPLES = 50
"""Most clips ``GET /examples`` lists: the page shows them as buttons."""
MAX_SCANNED = 1000
"""Most directory entries looked at, so a huge folder cannot make the listing slow."""

router = APIRouter(tags=["web"])


class Example(BaseModel):
    """One example clip the page offers."""

    name: str
    url: str
    media: Literal["audio", "video"]


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    """The page to try every adapter and manage versions."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/examples", summary="Example clips the page offers")
def list_examples(settings: SettingsDep) -> list[Example]:
    """The audio and video files of ``examples_dir`` (sorted by name, at most 50); empty when
    it is unset or missing."""
    folder = _folder(settings.examples_dir)
    if folder is None:
        return []
    names: list[str] = []
    with os.scandir(folder) as entries:
        for i, entry in enumerate(entries):
            if i >= MAX_SCANNED:
                break
            if _media(entry.name) is not None and _inside(folder, entry.name) is not None:
                names.append(entry.name)
    return [
        Example(name=n, url=f"/examples/{n}", media=_media(n) or "audio")
        for n in sorted(names)[:MAX_EXAMPLES]
    ]


@router.get(
    "/examples/{name}",
    summary="One example clip",
    response_class=FileResponse,
    responses={404: {"description": "no such example clip"}},
)
def get_example(name: str, settings: SettingsDep) -> FileResponse:
    """The file ``name`` of ``examples_dir`` (only a regular audio or video file directly in
    it: no sub-folders, no link leading out of it)."""
    folder = _folder(settings.examples_dir)
    path = None if folder is None or _media(name) is None else _inside(folder, name)
    if path is None:
        raise HTTPException(404, f"no example clip named {name!r}; GET /examples lists them")
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type)


def mount_static(app: FastAPI) -> None:
    """Serve ``service/static`` under ``/static``."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _folder(setting: Path | None) -> Path | None:
    """The examples folder, resolved, or None when unset or not a directory."""
    if setting is None:
        return None
    folder = setting.resolve()
    return folder if folder.is_dir() else None


def _media(name: str) -> Literal["audio", "video"] | None:
    """``audio`` or ``video`` by the file's suffix; None for any other file."""
    suffix = Path(name).suffix.lower()
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    return "video" if suffix in VIDEO_SUFFIXES else None


def _inside(folder: Path, name: str) -> Path | None:
    """``folder/name`` resolved when it is a regular file directly in ``folder`` (a plain name,
    not hidden, any link resolving inside the folder); else None."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        return None
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file():
        return None
    return path
