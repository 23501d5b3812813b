"""The docs stay in step with the code: settings, the named-query catalogue and links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flight_server.catalog import load_catalog
from flight_server.settings import PROJECT_ROOT, Settings, settings_fields

README_PATH = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
MARKDOWN = [README_PATH, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 350

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _table_rows(path: Path, first_cell: str) -> dict[str, str]:
    rows = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\|\s*`([^`]+)`\s*\|(.*)$", line)
        if match and re.fullmatch(first_cell, match.group(1)):
            rows[match.group(1)] = match.group(2)
    return rows


def _without_code(text: str) -> str:
    """`text` without fenced blocks and inline code spans, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of `path`."""
    anchors = set()
    for line in _without_code(path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def _relative_links(path: Path) -> list[str]:
    links = LINK.findall(_without_code(path.read_text()))
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link)]


def test_docs_every_setting_is_in_the_settings_table() -> None:
    documented = _table_rows(DOCS / "settings.md", r"FLIGHT_[A-Z0-9_]+")
    assert set(settings_fields()) == set(documented)


def test_docs_every_setting_has_a_description() -> None:
    assert all(settings_fields().values())


def test_docs_every_named_query_is_documented_with_its_parameters() -> None:
    catalog = load_catalog(Settings().schemas_dir / "catalog.toml")
    documented = _table_rows(README_PATH, r"[a-z]+\.[a-z_]+")
    assert set(catalog.names()) == set(documented)
    for query in catalog:
        row = documented[query.name]
        for param in query.params:
            assert re.search(rf"\b{param.name}\b", row), f"{query.name}: {param.name} missing"
            if param.required:
                assert f"**{param.name}**" in row, f"{query.name}: {param.name} not marked required"
        assert f"| {query.ttl_s} |" in row


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_docs_relative_links_resolve(path: Path) -> None:
    broken = []
    for link in _relative_links(path):
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
            broken.append(link)
    assert not broken, f"{path.name}: broken links {broken}"


def test_docs_readme_links_every_doc() -> None:
    linked = {(README_PATH.parent / link.partition("#")[0]).resolve() for link in _relative_links(README_PATH)}
    unlinked = sorted(doc.name for doc in DOCS.glob("*.md") if doc.resolve() not in linked)
    assert not unlinked, f"docs not linked from README.md: {unlinked}"


def test_docs_readme_stays_short() -> None:
    lines = len(README_PATH.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


@pytest.mark.parametrize("path", ["scripts/run", "scripts/test", ".ci/run"])
def test_docs_scripts_exist_and_are_executable(path: str) -> None:
    script = Path(PROJECT_ROOT / path)
    assert script.exists() and script.stat().st_mode & 0o111
