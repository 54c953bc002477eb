"""The shape of the code: short functions, and `zoo` naming nothing of the packages built on it.

(`lint-imports`, run by `make test`, checks the imports themselves: training -> zoo <- export.)
"""

import ast
import re
from importlib.metadata import entry_points

import pytest
from conftest import ROOT

PACKAGES = ("zoo", "training", "export")
MAX_FUNCTION_LINES = 80


def _sources(*packages):
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in _sources(*PACKAGES):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into steps:\n" + "\n".join(long)


def test_zoo_names_no_module_of_training_or_export_even_in_a_string():
    # An import path in a string ("training.cli:train") is an import the import linter cannot see.
    module_path = re.compile(r"(training|export)(\.\w+)+(:\w+)?")
    found = [f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}"
             for path in _sources("zoo") for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and module_path.fullmatch(node.value)]
    assert not found, found


def test_installed_entry_points_are_pyprojects():
    # zoo finds the commands and quickstart stages of training and export through the installed
    # metadata; a stale install (pyproject.toml changed since `pip install -e .`) would lose them.
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["entry-points"]
    for group, points in declared.items():
        installed = {ep.name: ep.value for ep in entry_points(group=group)}
        assert installed == points, f"entry points {group!r} are stale: reinstall with `pip install -e .`"
