"""The layering of the packages, read from the source: every ``import`` (at the top of a module
or inside a function) is checked against the rules ``docs/architecture.md`` states, and the
modules of the product import one another without cycles."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each product package and the product packages it may import (itself included). Third-party
# and standard-library imports are free, except where TRANSPORTS says otherwise.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "core": frozenset({"core"}),
    "verifiers": frozenset({"core", "verifiers"}),
    "intake": frozenset({"core", "intake"}),
    "workers": frozenset({"core", "verifiers", "workers"}),
    "simulators": frozenset({"core", "simulators"}),
    "monitoring": frozenset({"core", "monitoring"}),
    "demo": frozenset({"core", "intake", "verifiers", "simulators", "monitoring", "demo"}),
    "cluster": frozenset({"core", "simulators", "cluster"}),
    "admin": frozenset({"core", "admin"}),
    "cli": frozenset(
        {
            "admin",
            "core",
            "intake",
            "workers",
            "verifiers",
            "simulators",
            "monitoring",
            "demo",
            "cluster",
            "cli",
        }
    ),
}
PRODUCT = frozenset(MAY_IMPORT)
ABOVE_THE_PRODUCT = frozenset({"benchmarks", "tests"})
# A verifier only verifies: the broker is the worker runtime's business.
TRANSPORTS = {"verifiers": frozenset({"aio_pika", "aiormq", "pamqp"})}


def modules() -> Iterator[tuple[str, Path]]:
    for package in sorted(PRODUCT | {"benchmarks"}):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


@cache
def imports_of(path: Path) -> tuple[str, ...]:
    """Every module name ``path`` imports, absolute (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = path.relative_to(ROOT).parent.parts
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], base]).strip(".")
            found.append(base)
            # ``from core import metrics`` imports the module core.metrics.
            found.extend(f"{base}.{alias.name}" for alias in node.names)
    return tuple(found)


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def test_the_rules_see_every_package_and_every_import() -> None:
    """The check itself: it finds the packages on disk and the imports it must judge."""
    # A new package must be given its place in MAY_IMPORT.
    on_disk = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert on_disk - {"tests"} == PRODUCT | {"benchmarks"}
    names = dict(modules())
    assert "core.settings" in names
    assert "intake.app" in names
    cli_imports = {_top(n) for n in imports_of(names["cli.main"])}
    assert {"core", "intake", "workers", "demo"} <= cli_imports
    relative = ROOT / "verifiers" / "__init__.py"
    assert relative in names.values()


@pytest.mark.parametrize("package", sorted(PRODUCT))
def test_each_package_imports_only_what_its_layer_may(package: str) -> None:
    crossings = []
    for name, path in modules():
        if _top(name) != package:
            continue
        for imported in imports_of(path):
            top = _top(imported)
            if top in ABOVE_THE_PRODUCT or (top in PRODUCT and top not in MAY_IMPORT[package]):
                crossings.append(f"{name} imports {imported}")
            if top in TRANSPORTS.get(package, ()):
                crossings.append(f"{name} imports the transport {imported}")
    assert not crossings, "\n".join(crossings)


def test_benchmarks_are_imported_by_nothing_but_themselves_and_tests() -> None:
    for name, path in modules():
        if _top(name) in PRODUCT:
            assert not [i for i in imports_of(path) if _top(i) == "benchmarks"], name


def test_the_product_modules_import_one_another_without_cycles() -> None:
    """Tarjan's strongly connected components over the module graph (package ``__init__``
    modules count as the package): every component is one module."""
    names = {name: path for name, path in modules() if _top(name) in PRODUCT}
    graph = {
        name: sorted({i for i in imports_of(path) if i in names and i != name})
        for name, path in names.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, cycles
