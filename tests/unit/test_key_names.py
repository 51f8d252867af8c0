"""No Redis key name outside the core: the HTTP layer (`service/`) and the Celery layer (`worker/`)
read and write Redis only through the core's methods (the registry, queue, gate or stream that owns
the key), so each key has one home.

Found from the source (AST): a use of the `ukcancel.keys` module (``keys.<name>``, or importing
from it) and a string literal holding ``ukcancel:`` (docstrings, which describe keys, excepted).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("service", "worker")
PREFIX = "ukcancel:"

# file -> (the key uses it may keep, why). Each is a debt, not a licence: nothing else may be added.
KNOWN_EXCEPTIONS: dict[str, tuple[set[str], str]] = {
    "service/rate_limit.py": (
        {"keys.API_LIMITER_PREFIX"},
        "the prefix is handed to Flask-Limiter, which names its own keys; the module is being "
        "changed by the performance work, so the prefix moves to a core function after it lands",
    ),
    "worker/all_active.py": (
        {"keys.batch"},
        "the expansion WATCHes the batch's record in its own transaction; the module is being "
        "changed by the performance work, so the watch moves into BatchRegistry after it lands",
    ),
}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (module, class, function)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                found.add(id(body[0].value))
    return found


def key_uses(source: str, filename: str = "<source>") -> list[str]:
    """What in `source` names a Redis key: ``keys.<name>``, an import from ``ukcancel.keys``, or a
    ``ukcancel:`` string literal (each as `text (line n)`)."""
    tree = ast.parse(source, filename=filename)
    docstrings = _docstrings(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "keys":
            found.append(f"keys.{node.attr} (line {node.lineno})")
        elif isinstance(node, ast.ImportFrom) and node.module == "ukcancel.keys":
            found.extend(f"from ukcancel.keys import {alias.name} (line {node.lineno})" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "ukcancel" and any(
                alias.name == "keys" for alias in node.names):
            found.append(f"from ukcancel import keys (line {node.lineno})")
        elif isinstance(node, ast.Import) and any(alias.name == "ukcancel.keys" for alias in node.names):
            found.append(f"import ukcancel.keys (line {node.lineno})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and PREFIX in node.value \
                and id(node) not in docstrings:
            found.append(f"{node.value!r} (line {node.lineno})")
    return sorted(found)


def _name(use: str) -> str:
    return use.rpartition(" (line ")[0]


def findings() -> dict[str, list[str]]:
    """file (relative to the root) -> its key uses not excused by `KNOWN_EXCEPTIONS`."""
    result: dict[str, list[str]] = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            allowed = KNOWN_EXCEPTIONS.get(relative, (set(), ""))[0]
            # a file with excused uses needs the module, so its import is excused with them
            excused = allowed | ({"from ukcancel import keys"} if allowed else set())
            uses = [use for use in key_uses(path.read_text(), relative) if _name(use) not in excused]
            if uses:
                result[relative] = uses
    return result


def test_no_key_name_outside_the_core() -> None:
    assert findings() == {}


def test_the_known_exceptions_name_real_files() -> None:
    for relative, (names, reason) in KNOWN_EXCEPTIONS.items():
        assert (ROOT / relative).is_file(), relative
        assert names and reason


def test_the_check_finds_each_way_of_naming_a_key() -> None:
    source = '''"""A docstring may describe ``ukcancel:cmd:{id}``."""
from ukcancel import keys
from ukcancel.keys import DUE


def read(connection, user):
    """So may a function's."""
    connection.zcard(keys.DUE)
    connection.get(f"ukcancel:jobs:{user}")
    return {}.keys(), dict(keys=[1])
'''
    assert key_uses(source) == [
        "'ukcancel:jobs:' (line 9)",
        "from ukcancel import keys (line 2)",
        "from ukcancel.keys import DUE (line 3)",
        "keys.DUE (line 8)",
    ]
