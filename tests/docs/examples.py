"""The documentation's runnable examples: a fenced block right after `<!-- runnable: NAME -->`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
RUNNABLE = re.compile(r"<!-- runnable: ([\w.-]+) -->\n```(sh|python)\n(.*?)\n```", re.DOTALL)


@dataclass(frozen=True)
class Example:
    name: str
    language: str
    code: str
    page: str


def examples() -> dict[str, Example]:
    found: dict[str, Example] = {}
    for page in sorted(DOCS.rglob("*.md")):
        for name, language, code in RUNNABLE.findall(page.read_text()):
            assert name not in found, f"two runnable examples are named {name}"
            found[name] = Example(name, language, code + "\n", str(page.relative_to(DOCS)))
    return found
