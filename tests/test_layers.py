"""Imports go one way (docs/architecture.md): lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "stillmotion"

# layer -> package prefixes it must never import
FORBIDDEN = {
    "domain": ["api", "tasks", "worker", "engines", "storage", "media", "cli", "runtime", "config"],
    "catalog": [
        "api",
        "tasks",
        "worker",
        "engines",
        "storage",
        "media",
        "cli",
        "runtime",
        "config",
    ],
    "errors": ["api", "tasks", "worker", "engines", "storage", "media", "cli", "runtime", "config"],
    "media": ["api", "tasks", "worker", "engines", "storage", "cli", "runtime", "config"],
    "storage": ["api", "tasks", "worker", "engines", "cli", "runtime", "config"],
    "engines": ["api", "tasks", "worker", "cli", "runtime", "config"],
    "tasks": ["api", "worker", "cli", "runtime", "engines"],
    "worker": ["api", "cli"],
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.startswith("stillmotion")}


def _layer(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_go_down(path: Path) -> None:
    layer = _layer(path)
    for name in _imports(path):
        target = name.split(".")[1] if "." in name else ""
        assert target not in FORBIDDEN.get(layer, []), f"{layer} imports {name}"


def test_engines_do_not_import_heavy_things_at_module_level() -> None:
    for path in (PKG / "engines").glob("*.py"):
        top = ast.parse(path.read_text()).body
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in top if isinstance(n, ast.ImportFrom)}
        assert not {"torch", "diffusers", "fastapi"} & names, path
