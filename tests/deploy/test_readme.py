"""The README's promises that can drift from the code: the settings table and the CI command.

The settings are documented in the README's table, and the limits of the security page
(docs/operators/security.md, "Limits an operator can set") in that page's table: together they
list every setting, each once, with its default.
"""

from __future__ import annotations

import re
from pathlib import Path

from ukcancel.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SECURITY = (ROOT / "docs" / "operators" / "security.md").read_text()


def table_rows(text: str, heading: str) -> list[tuple[str, str]]:
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", section, flags=re.MULTILINE)
    return [(name, default.strip()) for name, default in rows]


def settings_table() -> dict[str, str]:
    rows = table_rows(README, "## Settings") + table_rows(SECURITY, "## Limits an operator can set")
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), "a setting documented twice"
    return dict(rows)


def test_every_setting_is_in_the_readme_table_and_nothing_else() -> None:
    documented = settings_table()
    assert sorted(documented) == sorted(variable for variable, _, _ in Settings.ENVIRONMENT)


def test_the_readme_table_shows_each_default() -> None:
    documented = settings_table()
    defaults = Settings()
    for variable, field_name, _ in Settings.ENVIRONMENT:
        value = getattr(defaults, field_name)
        cell = documented[variable]
        if value in (None, ()):
            assert cell.startswith(("unset", "empty", "`REDIS_URL`")), (variable, cell)
        else:
            assert cell.startswith(f"`{value}`"), (variable, cell, value)


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"^python3 -m venv .*$", README, flags=re.MULTILINE)
    assert len(commands) >= 2 and "ukcancel demo" in commands[0] and "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
