"""The project's import graph has no cycles, and the layers import downwards only.

Imports are read from the source with ``ast`` (nothing is imported), counting those inside
functions too: a deferred import still ties two modules together, it only hides the cycle
until the first call. Covers ``trainer``, ``export`` and ``edge_agent``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "export", "edge_agent")


def project_modules() -> dict[str, Path]:
    """Dotted module name → source file, packages named by their ``__init__``."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The project module that ``import name`` loads: ``name`` or its nearest parent."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``module`` imports anywhere in its source."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(o for a in node.names if (o := _owner(a.name, modules)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                # ``from pkg import sub`` imports the submodule when there is one.
                target = f"{base}.{alias.name}"
                owner = target if target in modules else _owner(base, modules)
                if owner:
                    found.add(owner)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_deferred_and_relative_imports() -> None:
    graph = import_graph()
    # trainer.cli imports trainer.fit inside a function only.
    assert "trainer.fit" in graph["trainer.cli"]
    assert "edge_agent.bundle.manifest" in graph["trainer.run_record"]


def test_no_import_cycles_among_project_modules() -> None:
    found = cycles(import_graph())
    assert found == [], "modules that import each other (directly or round a loop): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def _layer_violations(lower: str, higher: str) -> list[str]:
    graph = import_graph()
    return sorted(
        f"{m} imports {d}"
        for m, deps in graph.items()
        if m == lower or m.startswith(lower + ".")
        for d in deps
        if d == higher or d.startswith(higher + ".")
    )


def test_the_gateway_never_imports_the_desk() -> None:
    assert _layer_violations("edge_agent", "trainer") == []
    assert _layer_violations("edge_agent", "export") == []


def test_detect_does_not_import_bundle() -> None:
    """Detectors are built from a verified bundle by ``edge_agent.model_slot``; ``detect`` knows
    nothing of bundles, so a model swap owns the whole bundle → cascade path."""
    assert _layer_violations("edge_agent.detect", "edge_agent.bundle") == []
