"""The error tree drawn in harness/errors.py is the tree in the code, and every error is raised."""

from __future__ import annotations

import ast
import re

import harness
from harness.errors import HarnessError
from tests.harness.test_layers import MODULES


def _error_classes() -> dict[str, str]:
    """Every HarnessError subclass defined in the package, with its base's name."""
    found = {}
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.bases:
                base = node.bases[0]
                name = base.id if isinstance(base, ast.Name) else ""
                found[node.name] = name
    errors = {"HarnessError": ""}
    while True:  # the closure of subclasses, however deep
        more = {n: b for n, b in found.items() if b in errors and n not in errors}
        if not more:
            return errors
        errors |= more


def test_the_drawn_tree_is_the_code() -> None:
    doc = harness.errors.__doc__ or ""
    # The tree's lines: indented, a class name after the box-drawing characters.
    drawn = re.findall(r"^    [│├└─ ]*([A-Z]\w+) ", doc, re.M)
    assert set(drawn) == set(_error_classes())


def test_every_error_is_raised_somewhere() -> None:
    # Raised where it happens, or made there and raised elsewhere (a Future's set_exception).
    raised: set[str] = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            made = node.exc if isinstance(node, ast.Raise) else node
            if isinstance(made, ast.Call):
                made = made.func
            elif not isinstance(node, ast.Raise):
                continue
            if isinstance(made, ast.Attribute):  # DiskFullError.on(...)
                made = made.value
            if isinstance(made, ast.Name):
                raised.add(made.id)
    classes = _error_classes()
    leaves = {name for name in classes if name not in classes.values()}
    assert leaves - raised == set()
    assert issubclass(harness.DiskFullError, HarnessError)
