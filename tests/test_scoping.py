"""Project scoping on the syntax tree: no row of another project ever comes back."""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flight_server.errors import InvalidArgument
from flight_server.scoping import PROJECT_COLUMNS, scope_sql

PROJECTS = ["p1", "p2", "p3", "p'4"]


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    db = duckdb.connect()
    db.execute("CREATE TABLE projects AS SELECT unnest($1) AS id, 'name' AS name", [PROJECTS])
    db.execute(
        "CREATE TABLE cdx_records AS SELECT 'cdx-' || i AS id, $1[1 + i % 4] AS project_id, 'd' || (i % 5) AS domain "
        "FROM range(200) t(i)",
        [PROJECTS],
    )
    db.execute(
        "CREATE TABLE content_analytics AS SELECT 'cdx-' || i AS page_id, $1[1 + i % 4] AS project_id "
        "FROM range(0, 200, 3) t(i)",
        [PROJECTS],
    )
    db.execute("CREATE TABLE domains AS SELECT 'd' || i AS domain, $1[1 + i % 4] AS project_id FROM range(5) t(i)",
               [PROJECTS])  # fmt: skip
    yield db
    db.close()


# query building blocks: each yields a query whose first column is a project id
_SOURCES = {
    "cdx_records": "project_id",
    "content_analytics": "project_id",
    "projects": "id",
    "domains": "project_id",
}


@st.composite
def project_queries(draw: st.DrawFn, depth: int = 0) -> str:
    table = draw(st.sampled_from(sorted(_SOURCES)))
    column = _SOURCES[table]
    name = draw(st.sampled_from([table, f'"{table}"', f"main.{table}", f'main."{table}"']))
    shapes = ["plain", "join", "cte", "cte_shadow", "subquery", "union", "in_subquery"]
    shape = draw(st.sampled_from(shapes if depth < 2 else ["plain", "join"]))
    if shape == "plain":
        return f"SELECT t.{column} AS pid FROM {name} t"
    if shape == "join":
        return (
            f"SELECT c.project_id AS pid FROM cdx_records c JOIN {name} t ON t.{column} = c.project_id "
            f"OR t.{column} <> c.project_id"
        )
    inner = draw(project_queries(depth + 1))  # type: ignore[call-arg]
    if shape == "cte":
        return f"WITH q AS ({inner}) SELECT pid FROM q"
    if shape == "cte_shadow":  # a CTE named like a scoped table
        return f"WITH cdx_records AS ({inner}) SELECT pid FROM cdx_records"
    if shape == "subquery":
        return f"SELECT s.pid FROM ({inner}) s"
    if shape == "union":
        other = draw(project_queries(depth + 1))  # type: ignore[call-arg]
        return f"SELECT pid FROM ({inner}) a UNION ALL SELECT pid FROM ({other}) b"
    return f"SELECT project_id AS pid FROM cdx_records WHERE project_id IN (SELECT pid FROM ({inner}) x)"


@settings(max_examples=200, deadline=None)
@given(query=project_queries(), allowed=st.lists(st.sampled_from(PROJECTS), max_size=3, unique=True))
def test_scoping_never_returns_another_projects_rows(
    con: duckdb.DuckDBPyConnection, query: str, allowed: list[str]
) -> None:
    scoped = scope_sql(query, allowed, PROJECT_COLUMNS)
    rows = con.sql(scoped).fetchall()
    assert {r[0] for r in rows} <= set(allowed)


def test_scoping_keeps_unscoped_tables_and_aliases(con: duckdb.DuckDBPyConnection) -> None:
    sql = scope_sql("SELECT c.id FROM cdx_records c WHERE c.domain = 'd1'", ["p2"], PROJECT_COLUMNS)
    assert ' AS "c"' in sql
    ids = {r[0] for r in con.sql(sql).fetchall()}
    expected = {
        r[0] for r in con.sql("SELECT id FROM cdx_records WHERE domain = 'd1' AND project_id = 'p2'").fetchall()
    }
    assert ids == expected and ids


def test_scoping_with_no_projects_sees_nothing(con: duckdb.DuckDBPyConnection) -> None:
    assert con.sql(scope_sql("SELECT * FROM cdx_records", [], PROJECT_COLUMNS)).fetchall() == []


def test_scoping_quotes_project_ids(con: duckdb.DuckDBPyConnection) -> None:
    sql = scope_sql("SELECT DISTINCT project_id FROM cdx_records", ["p'4", "x') OR ('1'='1"], PROJECT_COLUMNS)
    assert con.sql(sql).fetchall() == [("p'4",)]


def test_scoping_refuses_what_it_cannot_scope() -> None:
    with pytest.raises(InvalidArgument):
        scope_sql("INSERT INTO cdx_records VALUES (1)", ["p1"], PROJECT_COLUMNS)
