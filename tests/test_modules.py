"""Every module of the package imports (the fast tier, `-m "not slow"`, runs this too).

A module that no test imports would otherwise only fail where it is used;
`test_every_subpackage_has_fast_tests` keeps each subpackage's behaviour
under at least one test outside the slow tier.
"""

import ast
import importlib
import os
import pkgutil

import pytest
from conftest import ROOT

import bebrjax

# bebrjax.__main__ runs the command line on import (`python -m bebrjax`; tested in test_cli).
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(bebrjax.__path__, "bebrjax.")
    if m.name != "bebrjax.__main__"
)


def test_the_walk_finds_every_file():
    files = {
        os.path.relpath(os.path.join(d, f), ROOT)[:-3]
        .replace(os.sep, ".")
        .removesuffix(".__init__")
        for d, _, names in os.walk(os.path.join(ROOT, "bebrjax"))
        for f in names
        if f.endswith(".py") and f != "__main__.py"
    }
    assert files - {"bebrjax"} == set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    assert importlib.import_module(name).__name__ == name


def _fast_imports() -> set[str]:
    """The bebrjax modules imported by test files with tests outside the slow tier."""
    found = set()
    for name in os.listdir(os.path.join(ROOT, "tests")):
        if not name.startswith("test_") or name in ("test_modules.py",):
            continue
        with open(os.path.join(ROOT, "tests", name)) as f:
            tree = ast.parse(f.read())
        slow_module = any(
            isinstance(node, ast.Assign)
            and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)
            for node in tree.body
        )
        fast = [
            node
            for node in tree.body
            if isinstance(node, ast.FunctionDef)
            and node.name.startswith("test_")
            and not any("slow" in ast.unparse(d) for d in node.decorator_list)
        ]
        if slow_module or not fast:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bebrjax"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("bebrjax"))
    return found


def test_every_subpackage_has_fast_tests():
    subpackages = {m for m in MODULES if hasattr(importlib.import_module(m), "__path__")}
    fast = _fast_imports()
    untested = {p for p in subpackages if not any(f == p or f.startswith(p + ".") for f in fast)}
    assert not untested, f"no fast-tier test file imports from {sorted(untested)}"
