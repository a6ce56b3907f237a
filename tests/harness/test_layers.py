"""The package's layers hold: no import cycles, and no import that runs up the layer order.

    cli -> {service, reproduce, evaluate} -> run -> {leaderboard, submission}
        -> {store, helm, checks} -> infra -> {errors, competition, secrets}

Every import counts, those inside functions too (a lazy import is still a dependency). A module
may import from its own package or from a lower layer; `harness/__init__.py` (the public API)
sits above everything. The README's layout section draws the same order.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "harness"
LAYERS = [
    {"errors", "competition", "secrets"},
    {"infra"},
    {"store", "helm", "checks"},
    {"leaderboard", "submission"},
    {"run"},
    {"service", "reproduce", "evaluate"},
    {"cli"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        if "plugins" in parts:  # run by HELM in its own environment; they import no harness code
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """The harness modules `name` imports, resolved to modules (not the names in them)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from harness.run import driver` imports the module harness.run.driver.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith("harness") and target != name:
                yield target


GRAPH = {name: set(_imports(name, path)) for name, path in MODULES.items()}


def _layer(module: str) -> str:
    return module.split(".")[1] if module != "harness" else ""


def test_the_graph_was_read() -> None:
    assert len(MODULES) > 50
    assert "harness.run.pipeline" in GRAPH["harness.run.driver"]
    assert all(_layer(module) in RANK for module in MODULES if module != "harness")


def test_no_import_runs_up_the_layers() -> None:
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if module != "harness"
        for target in targets
        if target != "harness"
        and _layer(target) != _layer(module)
        and RANK[_layer(target)] >= RANK[_layer(module)]
    )
    assert upward == []
    # Nothing but the public API imports the package's __init__ (it imports everything).
    assert sorted(module for module, targets in GRAPH.items() if "harness" in targets) == []


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert cycles == []


def test_only_the_docker_module_imports_the_docker_sdk() -> None:
    """infra/docker.py is the one boundary to the engine: Docker's exceptions are translated there.
    (Other modules hold SDK objects it hands them, and never import the SDK themselves.)"""
    importers = set()
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                modules = [node.module or ""]
            else:
                continue
            if any(module == "docker" or module.startswith("docker.") for module in modules):
                importers.add(name)
    assert importers == {"harness.infra.docker"}
