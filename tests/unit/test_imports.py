"""The package's import graph, read from the sources with ast (nothing is imported): no module
imports itself round a circle, and the config is data and validation that imports nothing of
the runtime. Imports under ``if TYPE_CHECKING:`` are left out (they never run); imports inside
functions count, since they run when called."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "src" / "fastmqtt"

# What fastmqtt.config may import besides itself and the standard library: the error type, the
# hash that names servers in stick tables (arithmetic, no runtime state), and the MQTT reason
# codes a config may name (wire constants, no imports of their own).
CONFIG_MAY_IMPORT = {"fastmqtt.errors", "fastmqtt.balance", "fastmqtt.packets"}
# `fastmqtt check` also loads TLS material and looks names up: the runtime's own validators,
# imported inside the command's functions, never at module level.
CONFIG_COMMAND = "fastmqtt.config.command"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def _type_checking_only(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def imports(name: str) -> dict[str, bool]:
    """The fastmqtt modules ``name`` imports -> whether at module level (else in a function)."""
    tree = ast.parse(MODULES[name].read_text())
    skipped = _type_checking_only(tree)
    top = {id(node) for node in tree.body}
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [f"{node.module}.{alias.name}" for alias in node.names]
            targets = [t if t in MODULES else node.module for t in targets]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            if target in MODULES and target != name:
                found[target] = found.get(target, False) or id(node) in top
    return found


GRAPH = {name: imports(name) for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read() -> None:
    """The reader sees the imports it must judge (else the tests below would pass on nothing)."""
    assert len(MODULES) > 40
    assert GRAPH["fastmqtt.runtime"]["fastmqtt.frontend"] is True
    assert GRAPH["fastmqtt.config.command"]["fastmqtt.tls"] is False  # inside a function
    assert "fastmqtt.runtime" not in GRAPH["fastmqtt.frontend"]  # TYPE_CHECKING only


def test_no_import_cycle() -> None:
    assert cycles({name: set(targets) for name, targets in GRAPH.items()}) == []


def test_cycle_detection_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("fastmqtt.config")))
def test_config_imports_nothing_of_the_runtime(name: str) -> None:
    outside = {
        target: top
        for target, top in GRAPH[name].items()
        if not target.startswith("fastmqtt.config") and target not in CONFIG_MAY_IMPORT
    }
    if name == CONFIG_COMMAND:
        outside = {target: top for target, top in outside.items() if top}
    assert outside == {}
