"""The arrows of docs/design.md: server -> tools -> sandbox -> nanochat, never the other way.

Every module of each layer is parsed (not imported) and each import of one of our layers,
at module level or inside a function, is checked against the layers it may use. Imports are
written with the full `autoresearch_mcp.` prefix (docs/contracts.md), so a relative import,
whose layer the check could not tell, is reported too.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

PACKAGE = "autoresearch_mcp"
LAYERS = ("server", "tools", "sandbox", "nanochat")  # each may import itself and those after it


def allowed(layer: str) -> set[str]:
    return set(LAYERS[LAYERS.index(layer) :])


def imported_layers(source: str) -> list[tuple[int, str]]:
    """(line, layer) for every import of one of our layers in `source`; 'relative' for a relative import."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "relative"))
            continue
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.module != PACKAGE else [f"{PACKAGE}.{a.name}" for a in node.names]
        else:
            continue
        found += [(node.lineno, name.split(".")[1]) for name in names if name.startswith(f"{PACKAGE}.")]
    return [(line, layer) for line, layer in found if layer in (*LAYERS, "relative")]


def wrong_way_imports(layer: str, folder: Path) -> list[str]:
    """'path:line: layer imports other' for each import against the arrows under `folder`."""
    problems = []
    for path in sorted(folder.rglob("*.py")):
        for line, imported in imported_layers(path.read_text(encoding="utf-8")):
            if imported not in allowed(layer):
                problems.append(f"{path}:{line}: {layer} imports {imported}")
    return problems


def layer_folder(layer: str) -> Path:
    return Path(importlib.import_module(f"{PACKAGE}.{layer}").__path__[0])


def test_every_import_follows_the_arrows() -> None:
    problems = [problem for layer in LAYERS for problem in wrong_way_imports(layer, layer_folder(layer))]
    assert problems == []


def test_the_check_sees_each_kind_of_import(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(
        "import autoresearch_mcp.server.app\n"
        "from autoresearch_mcp.tools import files\n"
        "from autoresearch_mcp import sandbox\n"
        "def later():\n"
        "    from autoresearch_mcp.nanochat.errors import UserError\n"
        "from .sibling import x\n",
        encoding="utf-8",
    )
    assert wrong_way_imports("nanochat", tmp_path) == [
        f"{tmp_path / 'bad.py'}:1: nanochat imports server",
        f"{tmp_path / 'bad.py'}:2: nanochat imports tools",
        f"{tmp_path / 'bad.py'}:3: nanochat imports sandbox",
        f"{tmp_path / 'bad.py'}:6: nanochat imports relative",
    ]
    assert wrong_way_imports("server", tmp_path) == [f"{tmp_path / 'bad.py'}:6: server imports relative"]
