"""No Redis key name outside the core: the HTTP layer (`service/`) and the Celery layer (`worker/`)
read and write Redis only through the core's methods (the registry, queue, gate or stream that owns
the key), so each key has one home.

Found from the source (AST): a use of the `ukcancel.keys` module (``keys.<name>``, or importing
from it) and a string literal holding ``ukcancel:`` (docstrings, which describe keys, excepted).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("service", "worker")
PREFIX = "ukcancel:"

# No file is excused (the last two were: the rate limit's prefix is now
# `ukcancel.quota.API_RATE_LIMIT_PREFIX`, and an expansion watches its batch through
# `BatchRegistry.watch_expanding`).


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


def findings() -> dict[str, list[str]]:
    """file (relative to the root) -> its key uses."""
    result: dict[str, list[str]] = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            uses = key_uses(path.read_text(), relative)
            if uses:
                result[relative] = uses
    return result


def test_no_key_name_outside_the_core() -> None:
    assert findings() == {}


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


def test_no_lua_script_repeats_a_state_name_or_a_key_prefix() -> None:
    """Lua in the core names command states and channel prefixes through
    `ukcancel.command.with_constants` (filled in from the Python constants), never as literals."""
    literal = re.compile(r"'(ukcancel:[^']*|queued|running|retrying|completed|aborted)'")
    found = []
    for layer in ("ukcancel", *LAYERS):
        for path in sorted((ROOT / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and "redis.call" in node.value:
                    found += [f"{path.relative_to(ROOT)}:{node.lineno}: {hit}" for hit in literal.findall(node.value)]
    assert found == []
    assert literal.search("redis.call('HGET', k, 'state') == 'completed'")  # the check sees one
