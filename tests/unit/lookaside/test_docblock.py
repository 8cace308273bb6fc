"""Generated doc blocks: written between their markers only, read back exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookaside.docblock import markers, read_block, write_block


def test_write_replaces_only_the_named_block(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    a_start, a_end = markers("a")
    b_start, b_end = markers("b")
    doc.write_text(f"intro\n{a_start}\nold a\n{a_end}\nmiddle\n{b_start}\nold b\n{b_end}\nend\n")
    write_block(doc, "a", "| new | a |\n|---|---|\n| 1 \\1 $& |")  # no regex escapes applied
    assert read_block(doc, "a") == "| new | a |\n|---|---|\n| 1 \\1 $& |"
    assert read_block(doc, "b") == "old b"
    text = doc.read_text()
    assert text.startswith("intro\n")
    assert "\nmiddle\n" in text
    assert text.endswith("end\n")


def test_a_file_without_the_markers_is_refused_by_name(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("no markers here\n")
    with pytest.raises(SystemExit, match=r"doc\.md has no <!-- recipes:start -->"):
        write_block(doc, "recipes", "x")
    assert doc.read_text() == "no markers here\n"
