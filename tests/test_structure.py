"""The package's shape, read from its source with ``ast`` (imports inside functions included):
no import cycles, no private name imported from another file, no function over 100 lines, task
names compared only in the task registry (docs/architecture.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"
FILES = sorted((SOURCE / "mobilenets").rglob("*.py"))


def _module(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(path): path for path in FILES}


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module imported from, name) for every ``from X import name`` in the file, relative ones resolved."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            found += [(target, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
    return found


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in FILES:
        source = _module(path)
        for target, name in _imports(path):
            full = f"{target}.{name}" if name else target
            imported = full if full in MODULES else target
            if imported in MODULES and imported != source:
                edges.setdefault(source, set()).add(imported)
    return edges


def test_no_import_cycles():
    edges = _graph()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in edges.get(node, ()):
            if nxt == path[0]:
                cycles.append(path + [nxt])
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its smallest module
                visit(nxt, path + [nxt])

    for start in MODULES:
        visit(start, [start])
    assert not cycles, cycles[:5]


def test_no_private_names_imported_from_another_file():
    private = [
        (_module(path), target, name)
        for path in FILES
        for target, name in _imports(path)
        if target.startswith("mobilenets") and re.match(r"_[^_]", name) and f"{target}.{name}" not in MODULES
    ]
    assert not private, private


def test_no_function_over_100_lines():
    long = [
        f"{_module(path)}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for path in FILES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 100
    ]
    assert not long, long


def test_task_names_are_compared_only_in_the_task_registry():
    """Every command asks the task (``get_task``, ``task_of``): no ``entry.task == "detection"``,
    ``info["task"] != "classification"``, ``style in ("detection", ...)`` (the data styles the tasks
    record bear their names) or the like outside ``tasks.py``."""
    names = {"classification", "detection", "segmentation"}

    def named(side: ast.expr) -> bool:
        items = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
        return any(isinstance(item, ast.Constant) and item.value in names for item in items)

    found = []
    for path in FILES:
        if path.name == "tasks.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(named(s) for s in [node.left, *node.comparators]):
                found.append(f"{_module(path)}:{node.lineno}")
    assert not found, found


def test_the_import_graph_has_the_known_edges():
    """(the checks above read imports as the interpreter resolves them, relative ones included)"""
    edges = _graph()
    assert "mobilenets.models.registry" in edges["mobilenets.models"]
    assert "mobilenets.errors" in edges["mobilenets.validate"]
