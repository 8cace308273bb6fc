"""Every shell command the docs show names something real: a make target, a console script with
its real subcommand and options, a module, a recipe, a route with its method, a file.

The README's two main commands are also run for real (``make test`` is CI itself; ``make demo``
by tests/e2e/test_demo.py); this test keeps every other shown command honest.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from lookaside.docblock import read_block
from service.__main__ import _parser as serve_parser
from service.app import create_app
from service.settings import ServiceSettings
from service.settings_table import table
from training import recipe_table
from training.cli import parser as train_parser
from training.recipes import RECIPES

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "training/README.md"]
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=(\"[^\"]*\"|'[^']*'|\$\([^)]*\)|\S*)\s+")


def _commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", doc.read_text(), re.S):
            for line in block.splitlines():
                line = line.split(" #")[0].strip() if not line.startswith("#") else ""
                if line:
                    found.append((doc.relative_to(ROOT).as_posix(), line))
    return found


COMMANDS = _commands()


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", text, re.M))


def _routes() -> list[tuple[str, re.Pattern[str]]]:
    app = create_app(ServiceSettings(_env_file=None, admin_token="x"))  # type: ignore[call-arg]
    paths = {p: {m.upper() for m in ops} for p, ops in app.openapi()["paths"].items()}
    paths["/"] = {"GET"}  # the web page (not in the API schema)
    out = []
    for path, methods in paths.items():
        pattern = re.compile("^" + re.sub(r"\{[^}]+\}", r"[^/]+", path) + "$")
        out.extend((m, pattern) for m in methods)
    return out


def _parse(parser: argparse.ArgumentParser, args: list[str]) -> None:
    if "--help" in args or "-h" in args:
        return
    try:
        parser.parse_args(args)
    except SystemExit as exc:  # argparse says what is wrong on stderr
        raise AssertionError(f"argparse refused {args}") from exc


def _check_training(args: list[str]) -> None:
    _parse(train_parser(), args)
    if "--recipe" in args:
        assert args[args.index("--recipe") + 1] in RECIPES


def _check_docker(args: list[str]) -> None:
    assert (ROOT / "docker-compose.yml").is_file()
    assert (ROOT / "docker/Dockerfile").is_file()
    if args[:1] == ["build"]:
        assert (ROOT / args[args.index("-f") + 1]).is_file()


def _check_curl(args: list[str]) -> None:
    url = next(a for a in args if a.startswith("http") or a.startswith("'http"))
    path = re.sub(r"^'?https?://[^/]+", "", url).split("?")[0].rstrip("'") or "/"
    if "-X" in args:
        method = args[args.index("-X") + 1]
    elif any(a in args for a in ("-F", "-d", "--data-binary")):
        method = "POST"
    else:
        method = "GET"
    assert any(m == method and p.match(path) for m, p in ROUTES), f"no route {method} {path}"


ROUTES = _routes()
_SHELL_TOOLS = frozenset({"umask", "openssl"})


def test_the_docs_show_commands() -> None:
    docs = {doc for doc, _ in COMMANDS}
    assert {"README.md", "docs/training.md", "docs/service.md", "docs/gpu.md"} <= docs
    assert ("README.md", "make demo") in COMMANDS
    assert ("README.md", "make test") in COMMANDS


def _check_tensorboard(args: list[str]) -> None:
    """The console script of the tensorboard dependency, pointed at a runs folder."""
    assert importlib.util.find_spec("tensorboard") is not None
    assert args[:1] == ["--logdir"], f"tensorboard {args} names no --logdir"


def _check_stream(args: list[str]) -> None:
    """The streaming client's console script (``lookaside.client.stream:main``)."""
    from lookaside.client.stream import build_parser

    _parse(build_parser(), args)


_OTHER_TOOLS: dict[str, Callable[[list[str]], None]] = {
    "curl": _check_curl,
    "lookaside-stream": _check_stream,
    "docker": _check_docker,
    "tensorboard": _check_tensorboard,
}


@pytest.mark.parametrize(("doc", "line"), COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_shown_command_names_something_real(doc: str, line: str) -> None:
    if re.fullmatch(r"[A-Z_][A-Z0-9_]*=(\"[^\"]*\"|'[^']*'|\S*)", line):
        return  # a variable the next lines use
    while _ENV.match(line):
        line = _ENV.sub("", line, count=1)
    words = shlex.split(line)
    head, args = words[0], words[1:]
    if head == "make":
        assert set(args) <= _make_targets(), f"{args} not in the Makefile"
    elif head == "lookaside-serve" or words[:3] == ["python", "-m", "service"]:
        _parse(serve_parser(), args if head == "lookaside-serve" else words[3:])
    elif head == "lookaside-train":
        _check_training(args)
    elif words[:3] == ["python", "-m", "training"]:
        _check_training(words[3:])
    elif head == "torchrun":
        i = words.index("-m")
        assert words[i + 1] == "training"
        _check_training(words[i + 2 :])
    elif head == "python" and args[:1] == ["-m"]:
        assert importlib.util.find_spec(args[1]) is not None, f"no module {args[1]}"
    elif head in _OTHER_TOOLS:
        _OTHER_TOOLS[head](args)
    elif head not in _SHELL_TOOLS:  # plain shell (the admin-token file) names nothing of ours
        pytest.fail(f"{doc}: unrecognised command {line!r}: teach this test what it names")


def test_readme_settings_table_is_current() -> None:
    """``make docs`` regenerates it from ServiceSettings; a new setting must show up."""
    block = read_block(ROOT / "README.md", "settings")
    assert block == table()
    for name in ServiceSettings.model_fields:
        assert f"LOOKASIDE_{name.upper()}" in block


def test_training_docs_recipe_table_is_current() -> None:
    """``make docs`` regenerates it from RECIPES: every recipe is listed with its source."""
    block = read_block(ROOT / "docs" / "training.md", "recipes")
    assert block == recipe_table.table(), "docs/training.md is stale: run `make docs`"
    for name in RECIPES:
        assert f"| `{name}` |" in block


_REPO_PATH = re.compile(
    r"`((?:service|training|lookaside|docker|tests|benchmarks|examples|docs|adapters_store)"
    r"/[\w./-]*\w)(?::\d+)?`"
)

_LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)#\s]+)(?:#[^)]*)?\)")


def _named_paths() -> list[tuple[str, str]]:
    found = []
    for doc in [*DOCS, *sorted(ROOT.glob("*/README.md"))]:
        text = doc.read_text()
        for path in _REPO_PATH.findall(text):
            found.append((doc.relative_to(ROOT).as_posix(), path))
        for link in _LINK.findall(text):  # relative to the document
            target = (doc.parent / link).resolve().relative_to(ROOT.resolve()).as_posix()
            found.append((doc.relative_to(ROOT).as_posix(), target))
    return sorted(set(found))


NAMED_PATHS = _named_paths()


def test_the_docs_name_repository_files() -> None:
    assert len(NAMED_PATHS) > 20  # the pattern still finds what the docs name


@pytest.mark.parametrize(("doc", "path"), NAMED_PATHS, ids=[f"{d}:{p}" for d, p in NAMED_PATHS])
def test_a_file_the_docs_name_exists(doc: str, path: str) -> None:
    """A path in backticks (``service/engine/batcher.py``, ``docker/grafana/``) is in the repo:
    a module that moved or a file that never existed is caught here, not by a reader."""
    if "*" in path or "<" in path:
        return
    assert (ROOT / path).exists(), f"{doc} names {path}, which does not exist"


def _python_blocks() -> list[tuple[str, str]]:
    return [
        (doc.relative_to(ROOT).as_posix(), block)
        for doc in DOCS
        for block in re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    ]


PYTHON_BLOCKS = _python_blocks()


@pytest.mark.parametrize(
    ("doc", "code"), PYTHON_BLOCKS, ids=[f"{d}:{i}" for i, (d, _) in enumerate(PYTHON_BLOCKS)]
)
def test_shown_python_compiles_and_imports_real_names(doc: str, code: str) -> None:
    """A Python example compiles, and each ``from lookaside... import X`` names a real X (the
    README's library example also runs for real: tests/integration/test_readme_example.py)."""
    compile(code, doc, "exec")
    for module, names in re.findall(r"^from (lookaside[\w.]*) import ([\w, ]+)$", code, re.M):
        imported = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(imported, name), f"{doc}: {module} has no {name}"
