"""Rules of the code base that a linter does not check (STYLE.md §14)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGES = ("lookaside", "training", "service")


def _python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("lookaside", {"service", "training"}), ("service", {"training"}), ("training", {"service"})],
)
def test_layering(package: str, forbidden: set[str]) -> None:
    offenders = [str(p) for p in _python_files(package) if _imported_roots(p) & forbidden]
    assert not offenders, f"{package} must not import {forbidden}: {offenders}"


def test_nothing_unpickles() -> None:
    pattern = re.compile(r"torch\.load\(|pickle\.loads?\(|import pickle")
    offenders = [
        str(p) for pkg in PACKAGES for p in _python_files(pkg) if pattern.search(p.read_text())
    ]
    assert not offenders, f"adapter weights are safetensors; these unpickle: {offenders}"


def test_required_top_level_layout() -> None:
    for name in ("service", "training", "adapters_store", "docker", "tests"):
        assert (ROOT / name).is_dir(), name
        if name != "tests":
            assert (ROOT / name / "README.md").is_file(), name
    assert (ROOT / "docker-compose.yml").is_file()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "make test" in (ROOT / "README.md").read_text()


def _undocumented_fields(cls: type) -> list[str]:
    """Annotated fields of ``cls`` (its own body) not followed by a string literal."""
    module = __import__(cls.__module__, fromlist=["_"])
    tree = ast.parse(Path(module.__file__ or "").read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    missing = []
    for stmt, nxt in zip(node.body, [*node.body[1:], None], strict=True):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        if stmt.target.id == "model_config":
            continue
        documented = (
            isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        )
        if not documented:
            missing.append(f"{cls.__name__}.{stmt.target.id}")
    return missing


def test_every_config_field_is_documented() -> None:
    """Config classes document each field with an attribute docstring (vLLM style)."""
    from lookaside.adapters import ADAPTERS
    from lookaside.adapters.base import AdapterConfig
    from lookaside.adapters.head import HeadConfig
    from lookaside.backbone_config import BackboneConfig
    from lookaside.sites import TokenLayout

    roots = [BackboneConfig, TokenLayout, HeadConfig, AdapterConfig]
    roots += [m.config_cls for m in ADAPTERS.values()]
    classes = {k for cls in roots for k in cls.__mro__ if k.__module__.startswith("lookaside")}
    missing = sorted(f for cls in classes for f in _undocumented_fields(cls))
    assert not missing, f"undocumented config fields: {missing}"


def test_product_code_cites_only_documents_in_the_repository() -> None:
    """Comments cite docs/ (a newcomer who clones the repository can follow them), never design
    documents that live outside it; and every cited docs/ file and section exists."""
    outside = re.compile(r"NOTES *§|NOTES\.md|STYLE +\d|STYLE\.md|CONTRACTS")
    cited = re.compile(r"docs/([\w-]+\.md)(?: §(\d+))?")
    design = (ROOT / "docs" / "design.md").read_text()
    for package in ("lookaside", "service", "training"):
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            assert not outside.search(text), f"{path.relative_to(ROOT)} cites a document outside"
            for name, section in cited.findall(text):
                assert (ROOT / "docs" / name).is_file(), f"{path.relative_to(ROOT)}: docs/{name}"
                if name == "design.md" and section:
                    assert f"## §{section} " in design, f"{path.relative_to(ROOT)}: §{section}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(path: Path, known: set[str]) -> set[str]:
    """Product modules ``path`` imports when its code runs: module level and inside functions
    (a deferred import that closes a loop is still a cycle), but not ``if TYPE_CHECKING:``
    blocks, which only annotations see and which never run."""
    tree = ast.parse(path.read_text())
    annotation_only = {
        id(inner)
        for node in ast.walk(tree)
        if _is_type_checking(node)
        for stmt in node.body  # type: ignore[attr-defined]
        for inner in ast.walk(stmt)
    }
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in annotation_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    resolved = set()
    for name in found:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            resolved.add(name)
    return resolved


def _import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for pkg in PACKAGES for p in _python_files(pkg)}
    known = set(paths)
    graph = {}
    for name, path in paths.items():
        deps = _runtime_imports(path, known)
        # importing a.b.c runs the packages a and a.b first: an import depends on its packages
        graph[name] = {p for d in deps for p in _with_packages(d) if p in known} - {name}
    return graph


def _with_packages(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles() -> None:
    """No product module imports one that (transitively) imports it back when it runs.

    Importing ``a.b.c`` runs the packages ``a`` and ``a.b`` first, so it counts as importing them
    too (a cycle through a package's ``__init__`` is found). A package's ``__init__`` that
    re-exports its submodules is the one accepted pattern: a submodule importing the package it
    belongs to is not counted (Python runs that package first, whatever the submodule does)."""
    graph = _import_graph()
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not (name.startswith(d + ".") and d != name)}
    cycles = _cycles(graph)
    assert not cycles, "import cycles (imports that run): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 70


def test_product_files_and_functions_stay_small() -> None:
    """Small modules with one job: no product file over ~450 lines, and no function over 70
    lines unless its docstring says why (a line containing ``Long because``)."""
    big_files = []
    long_functions = []
    for pkg in PACKAGES:
        for path in _python_files(pkg):
            text = path.read_text()
            lines = text.count("\n") + 1
            if lines > MAX_FILE_LINES:
                big_files.append(f"{path.relative_to(ROOT)} ({lines} lines)")
            for node in ast.walk(ast.parse(text)):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                reason = "Long because" in (ast.get_docstring(node) or "")
                if length > MAX_FUNCTION_LINES and not reason:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.name} ({length})")
    assert not big_files, f"files over {MAX_FILE_LINES} lines: {big_files}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"
