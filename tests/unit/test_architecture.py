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
