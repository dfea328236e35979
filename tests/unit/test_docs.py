"""The docs a newcomer walks: every relative link and anchor leads somewhere, and the changelog
names every patch marker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from testing import ROOT

DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(markdown: Path) -> set[str]:
    """GitHub's anchors of a file's headings: lower case, punctuation dropped, spaces to '-'."""
    found = set()
    in_code = False
    for line in markdown.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def links(markdown: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", markdown.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(doc: Path):
    broken = []
    for target in links(doc):
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no such heading")
    assert broken == [], broken


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 260


def test_changelog_lists_every_patched_marker():
    sources = [ROOT / "workflows.py", *(ROOT / "skypilot_temporal").rglob("*.py")]
    code = "\n".join(p.read_text() for p in sources)
    constants = dict(re.findall(r'^([A-Z_]+) = "([a-z0-9-]+)"', code, re.M))
    markers = {constants[name] for name in re.findall(r"workflow\.patched\(([A-Z_]+)\)", code)}
    assert len(markers) >= 5
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert {m for m in markers if f"`{m}`" not in changelog} == set()


def test_the_code_map_names_every_module():
    """docs/development.md's map: every module of the package and the example is in a row."""
    rows = "\n".join(
        line for line in (ROOT / "docs" / "development.md").read_text().splitlines() if line.startswith("| `")
    )
    package = ROOT / "skypilot_temporal"
    modules = [p.relative_to(package) for p in package.rglob("*.py") if p.name != "__init__.py"]
    modules += [p.relative_to(ROOT) for p in ROOT.glob("*.py")]
    assert [str(m) for m in modules if f"`{m}`" not in rows] == []
