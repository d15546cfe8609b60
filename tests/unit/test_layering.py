"""The import graph runs one way: schemas -> runtime and storage -> stages -> services."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.unit

STAGES = ("ingest", "features", "infer", "decision", "sink", "outcomes")
LOWER_LAYERS = ("runtime", "storage")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every absolute module a file imports, at module level or inside functions (lazy imports count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def violations(package: Path, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted(package.rglob("*.py")):
        for line, module in imported_modules(path):
            if module.split(".")[0] in forbidden or any(module == f or module.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {module}")
    return out


def test_no_module_under_streams_imports_services() -> None:
    assert violations(REPO_ROOT / "streams", ("services",)) == []


@pytest.mark.parametrize("layer", LOWER_LAYERS)
def test_runtime_and_storage_import_no_stage(layer: str) -> None:
    forbidden = (*(f"streams.{stage}" for stage in STAGES), "services")
    assert violations(REPO_ROOT / "streams" / layer, forbidden) == []


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    """The walk must catch an import hidden in a function body, or the tests above could not fail."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from services.gateway import app\n    import services.cli\n", encoding="utf-8")
    assert imported_modules(module) == [(2, "services.gateway"), (3, "services.cli")]
