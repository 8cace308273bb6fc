"""The one token-file reader of the server's settings and the client."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookaside.errors import ConfigError
from lookaside.token_file import MAX_TOKEN_FILE_BYTES, read_token_file


def test_the_token_is_read_stripped_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  s3cret\n")
    assert read_token_file(path) == "s3cret"
    path.write_bytes(b"x" * MAX_TOKEN_FILE_BYTES)
    assert len(read_token_file(path)) == MAX_TOKEN_FILE_BYTES
    path.write_bytes(b"x" * (MAX_TOKEN_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="empty or over 4096 bytes"):
        read_token_file(path)


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"\n\t ", "empty or over"), (b"\xff\xfe token", "not UTF-8"), (None, "cannot read")],
)
def test_what_is_no_token_is_refused_with_the_reason(
    tmp_path: Path, content: bytes | None, words: str
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=words) as exc:
        read_token_file(path)
    assert str(path) in str(exc.value)
