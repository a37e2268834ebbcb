"""The package's layout, read from its source with ``ast``: no import cycle, no file over 400 lines, no
private name imported across modules.

Every import counts, wherever it is written: at the top, inside a function, under ``if TYPE_CHECKING:``
(a cycle a type checker needs is still a design that goes back up). Relative imports are resolved;
``from pkg import name`` is an import of the module ``pkg.name`` when there is one, else of ``pkg``.
Only modules of ``event_ingest`` are nodes; the standard library and third parties are not.

    python -m pytest event_ingest_tests/test_layout.py
"""

from __future__ import annotations

import ast
from pathlib import Path

import event_ingest

ROOT = Path(event_ingest.__file__).resolve().parent
PACKAGE = ROOT.name
MAX_LINES = 400


def module_files() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its ``__init__.py``)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute name ``from <node.module> import ...`` refers to, inside ``module``."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package(path) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, str | None]]:
    """(module imported, line, name imported from it or None) for every import in ``module``'s source,
    restricted to the package's own modules."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, None) for alias in node.names if alias.name in modules]
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, path, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    found.append((submodule, node.lineno, None))
                elif source in modules:
                    found.append((source, node.lineno, alias.name))
    return found


def graph() -> dict[str, dict[str, int]]:
    """module -> {module it imports: the first line that does}."""
    modules = module_files()
    edges: dict[str, dict[str, int]] = {m: {} for m in modules}
    for module, path in modules.items():
        for target, line, _ in imports(module, path, modules):
            if target != module:
                edges[module].setdefault(target, line)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) through each strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return [cycle_in(component, edges) for component in components]


def cycle_in(component: set[str], edges: dict[str, dict[str, int]]) -> list[str]:
    """The shortest cycle through the component's first module (breadth-first, inside the component)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(edges[v]):
                if w == start:
                    return [*paths[v], start]
                if w in component and w not in paths:
                    paths[w] = [*paths[v], w]
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start} in its own component")


def describe(cycle: list[str], edges: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {edges[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join([*steps, cycle[-1]])


def test_no_import_cycle():
    edges = graph()
    found = [describe(cycle, edges) for cycle in cycles(edges)]
    assert not found, f"{len(found)} import cycles:\n" + "\n".join(found)


def test_no_file_over_400_lines():
    long = {
        str(path.relative_to(ROOT.parent)): n
        for path in sorted(ROOT.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_no_private_name_imported_across_modules():
    modules = module_files()
    private = [
        f"{path.relative_to(ROOT.parent)}:{line}: from {source} import {name}"
        for module, path in modules.items()
        for source, line, name in imports(module, path, modules)
        if name is not None and name.startswith("_") and not name.startswith("__")
    ]
    assert not private, f"{len(private)} private names imported across modules:\n" + "\n".join(private)
