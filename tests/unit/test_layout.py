"""The import rules of DESIGN §1, kept by a test rather than by memory."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imports(package: str) -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(path.name, alias.name.split(".")[0]) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((path.name, node.module.split(".")[0]))
    return found


def test_core_imports_only_stdlib_cryptography_and_itself() -> None:
    allowed = set(sys.stdlib_module_names) | {"cryptography", "doorkeep"}
    bad = [(f, m) for f, m in imports("doorkeep") if m not in allowed]
    assert not bad, f"doorkeep/ must stay free of I/O libraries and other parts: {bad}"


@pytest.mark.parametrize("package, forbidden", [
    ("edge", {"server", "simulators"}),
    ("server", {"edge", "simulators"}),
])
def test_edge_and_server_never_import_each_other_or_simulators(package: str, forbidden: set[str]) -> None:
    bad = [(f, m) for f, m in imports(package) if m in forbidden]
    assert not bad, f"{package}/ imports {bad}"


def test_core_cli_loads_parts_only_by_name() -> None:
    from doorkeep.cli import HANDLERS

    for target in HANDLERS.values():
        module = target.split(":")[0]
        assert module.split(".")[0] in {"doorkeep", "edge", "server", "simulators"}
        assert module.split(".")[0] == "doorkeep" or module.endswith(".cli")
