"""The documentation site builds with `mkdocs build --strict` (every page in the nav exists, every
link and anchor resolves) and loads nothing from the network; its settings table says which
process reads each setting, as `ukcancel.presence.READERS` does."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ukcancel import presence
from ukcancel.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MKDOCS = str(Path(sys.executable).with_name("mkdocs"))

def nav_pages(nav: list) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        for value in entry.values():
            pages.extend(nav_pages(value) if isinstance(value, list) else [value])
    return pages


def build(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    shutil.copytree(DOCS, source / "docs")
    shutil.copy(ROOT / "mkdocs.yml", source / "mkdocs.yml")
    site = tmp_path / "site"
    result = subprocess.run([MKDOCS, "build", "--strict", "--site-dir", str(site)], cwd=source,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return site


def test_the_site_builds_strictly_with_every_page_of_the_nav(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = nav_pages(config["nav"])
    missing = [page for page in pages if not (DOCS / page).exists()]
    assert missing == []
    written = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert written - set(pages) == set(), "every page is in the nav"
    site = build(tmp_path)
    for page in pages:
        assert (site / page.replace(".md", ".html")).exists(), page


def test_the_site_loads_nothing_from_the_network(tmp_path: Path) -> None:
    site = build(tmp_path)
    external = re.compile(r"""<(script|link|img|iframe|source)\b[^>]*\b(src|href)\s*=\s*["']?(https?:)?//""", re.I)
    css_import = re.compile(r"""(@import|url\()\s*["']?(https?:)?//""", re.I)
    found = []
    for path in site.rglob("*"):
        if path.suffix == ".html":
            found += [f"{path.relative_to(site)}: {m.group(0)}" for m in external.finditer(path.read_text())]
        elif path.suffix == ".css":
            found += [f"{path.relative_to(site)}: {m.group(0)}" for m in css_import.finditer(path.read_text())]
    assert found == []


def settings_rows() -> dict[str, list[str]]:
    text = (DOCS / "operators" / "settings.md").read_text()
    return {m.group(1): [cell.strip() for cell in m.group(2).split(" | ")]
            for m in re.finditer(r"^\| `([A-Z_]+)` \| (.+) \|$", text, flags=re.MULTILINE)}


def test_the_settings_table_lists_every_setting_with_its_default_and_readers() -> None:
    rows = settings_rows()
    assert sorted(rows) == sorted(variable for variable, _, _ in Settings.ENVIRONMENT)
    defaults = Settings()
    names = {presence.API: "API", presence.WORKER: "worker", presence.STREAM_CONSUMER: "stream consumer",
             presence.CLI: "CLI"}
    for variable, field_name, _ in Settings.ENVIRONMENT:
        default, read_by = rows[variable][0], rows[variable][1]
        value = getattr(defaults, field_name)
        if value in (None, ()):
            assert default.startswith(("unset", "empty", "`REDIS_URL`")), (variable, default)
        else:
            assert default.startswith(f"`{value}`"), (variable, default, value)
        reader = presence.READERS[variable]
        expected = ", ".join(names[role] for role in reader.roles)
        if reader.agree:
            expected += " (must agree" + (", compared by hash" if reader.secret else "") + ")"
        assert read_by == expected, (variable, read_by, expected)
