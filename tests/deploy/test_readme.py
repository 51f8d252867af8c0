"""The README is the short front page: what it is, the two commands (the second is what CI runs),
an example, a picture, a benchmark summary and links into the documentation, each of which
exists. Everything else lives in docs/ (tests/docs checks the site and its settings table)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_the_two_commands_come_first_and_ci_runs_the_second() -> None:
    commands = re.findall(r"^python3 -m venv .*$", README, flags=re.MULTILINE)
    assert len(commands) == 2 and commands[0].endswith("ukcancel demo") and commands[1].endswith("pytest")
    assert commands[0] == "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/ukcancel demo"
    assert commands[1] == "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest"
    assert README.index(commands[0]) < README.index("```\n>>>")  # before anything else in a code block
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_the_readme_is_a_front_page() -> None:
    assert len(README.splitlines()) <= 80
    headings = re.findall(r"^## (.+)$", README, flags=re.MULTILINE)
    assert headings == ["Guarantees", "Benchmarks", "Documentation"]


def test_every_link_and_picture_of_the_readme_exists() -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert any(t.endswith(".png") for t in local), "a picture"
    assert "docs/developers/benchmarks.md" in local
    for section in ("users", "pipelines", "operators", "developers"):
        assert any(t.startswith(f"docs/{section}/") for t in local), section
    missing = [t for t in local if not (ROOT / t).exists()]
    assert missing == []


def test_the_benchmark_summary_quotes_the_benchmarks_page() -> None:
    summary = README.split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    page = (ROOT / "docs" / "developers" / "benchmarks.md").read_text()
    commit = re.search(r"commit (\w{7,40})", summary).group(1)
    assert f"commit {commit}" in page
    for figure in re.findall(r"\b\d[\d,]*\.\d+\b|\b\d{1,3}(?:,\d{3})+\b", summary):
        assert figure in page, figure
