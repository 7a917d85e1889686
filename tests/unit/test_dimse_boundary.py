"""``gateway.dimse`` speaks DIMSE only: nothing in it imports the layers above it."""

from __future__ import annotations

import ast
from pathlib import Path

DIMSE = Path(__file__).resolve().parents[2] / "gateway" / "dimse"
ABOVE = ("gateway.retrieve", "gateway.routes", "gateway.wado", "gateway.stow", "gateway.search", "gateway.app")


def test_dimse_imports_nothing_from_the_layers_above_it() -> None:
    for path in DIMSE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            upward = [n for n in names if n.startswith(ABOVE)]
            assert not upward, f"{path.name} imports {upward}"
