"""Reading the admin token from a file, the one way the server and its clients do it.

A file keeps the token out of ``ps``, ``/proc/<pid>/cmdline``, shell history and ``docker
inspect`` (a Docker secret is such a file). The read is bounded: a token file is at most
:data:`MAX_TOKEN_FILE_BYTES`, whatever path a setting or an environment variable names.
"""

from __future__ import annotations

from pathlib import Path

from lookaside.errors import ConfigError

MAX_TOKEN_FILE_BYTES = 4096
"""Largest token file read (a token is a few dozen bytes; anything larger is not one)."""


def read_token_file(path: Path) -> str:
    """The token in ``path``, surrounding whitespace stripped.

    Raises:
        ConfigError: the file cannot be read, is empty, over the size bound, or not UTF-8.
    """
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {str(path)!r}: {exc.strerror}") from None
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"the token file {str(path)!r} is not UTF-8 text") from None
    if len(data) > MAX_TOKEN_FILE_BYTES or not token:
        raise ConfigError(
            f"the token file {str(path)!r} is empty or over {MAX_TOKEN_FILE_BYTES} bytes: "
            "not a token"
        )
    return token
