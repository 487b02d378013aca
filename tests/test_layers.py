"""The package's structure: layers, cycles, error types and module sizes.

The layers import downward only, and no modules or packages import in a
cycle; every import counts, those inside functions included. A module's
layer is its top-level name under `bebrjax` (README.md, Layout, draws the
same map). Error types come from `bebrjax.errors`; no module exceeds 450 lines.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "bebrjax"

# Bottom to top: a module imports from its own layer and the layers below.
LAYERS = (
    # The shared base (`bebrjax` itself: its version).
    ("bebrjax", "errors", "config", "distributed", "sharding", "checkpoint", "optim"),
    # Run files and output.
    ("workdir", "report", "progress"),
    ("data", "models", "losses"),
    # Below evaluators and trainers: retrieval metrics and codes go through the indexes.
    ("search",),
    # Trainers evaluate as they train; trainers.runs reads a finished run back.
    ("evaluators", "trainers"),
    # The library's entry points: a finished run's parts and what is made with them.
    ("inference", "serving"),
    # Front ends: the command, its helpers, the benchmarks.
    ("cli", "commands", "benchmarks", "__main__"),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, pathlib.Path]:
    """{dotted module name: path} of every module of the package."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """The package's modules that module `name` imports, anywhere in its body.

    `from a import b` is an import of module `a.b` where there is one, else of `a`.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _unit(module: str) -> str:
    """The layer unit of a module: its top-level name under `bebrjax`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_every_module_has_a_layer():
    assert sorted({_unit(m) for m in MODULES} - set(LAYER)) == []


def test_imports_go_downward():
    upward = [
        f"{module} -> {target}"
        for module, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if LAYER[_unit(target)] > LAYER[_unit(module)]
    ]
    assert upward == []


def test_no_module_cycles():
    assert _cycles(GRAPH) == []


PACKAGES = sorted(name for name, path in MODULES.items() if path.name == "__init__.py")


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_cycles(package):
    """Within a package (`bebrjax`: the layers' units), its members import without cycles."""
    depth = package.count(".") + 2

    def member(module: str) -> str:
        return ".".join(module.split(".")[:depth])

    inside = [m for m in MODULES if m.startswith(package + ".")]
    graph: dict[str, set[str]] = {member(m): set() for m in inside}
    for module in inside:
        graph[member(module)].update(
            member(t)
            for t in GRAPH[module]
            if t.startswith(package + ".") and member(t) != member(module)
        )
    assert _cycles(graph) == []


def test_no_module_over_450_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}


def test_errors_come_from_errors():
    """Error types are defined in `bebrjax.errors` and imported from there.

    A package's `__init__` may name one in its public API (e.g.
    `bebrjax.inference.LoadError`), imported from `bebrjax.errors` too.
    """
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                if name != "bebrjax.errors":
                    found.append(f"{name} defines {node.name}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bebrjax"):
                for alias in node.names:
                    if alias.name.endswith("Error") and node.module != "bebrjax.errors":
                        found.append(f"{name} imports {alias.name} from {node.module}")
    assert found == []
