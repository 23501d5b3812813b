"""The README stays in step with the code: settings and the named-query catalogue."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flight_server.catalog import load_catalog
from flight_server.settings import PROJECT_ROOT, Settings, settings_fields

README = (PROJECT_ROOT / "README.md").read_text()


def _table_rows(first_cell: str) -> dict[str, str]:
    rows = {}
    for line in README.splitlines():
        match = re.match(r"^\|\s*`([^`]+)`\s*\|(.*)$", line)
        if match and re.fullmatch(first_cell, match.group(1)):
            rows[match.group(1)] = match.group(2)
    return rows


def test_docs_every_setting_is_in_the_readme_table() -> None:
    documented = _table_rows(r"FLIGHT_[A-Z0-9_]+")
    assert set(settings_fields()) == set(documented)


def test_docs_every_setting_has_a_description() -> None:
    assert all(settings_fields().values())


def test_docs_every_named_query_is_documented_with_its_parameters() -> None:
    catalog = load_catalog(Settings().schemas_dir / "catalog.toml")
    documented = _table_rows(r"[a-z]+\.[a-z_]+")
    assert set(catalog.names()) == set(documented)
    for query in catalog:
        row = documented[query.name]
        for param in query.params:
            assert re.search(rf"\b{param.name}\b", row), f"{query.name}: {param.name} missing"
            if param.required:
                assert f"**{param.name}**" in row, f"{query.name}: {param.name} not marked required"
        assert f"| {query.ttl_s} |" in row


@pytest.mark.parametrize("path", ["scripts/run", "scripts/test", ".ci/run"])
def test_docs_scripts_exist_and_are_executable(path: str) -> None:
    script = Path(PROJECT_ROOT / path)
    assert script.exists() and script.stat().st_mode & 0o111
