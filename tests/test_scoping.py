"""Project scoping on the syntax tree: no row of another project ever comes back."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flight_server.errors import InvalidArgument
from flight_server.security.scoping import PROJECT_COLUMNS, scope_sql
from flight_server.security.sqlguard import check_read_only

PROJECTS = ["p1", "p2", "p3", "p'4"]


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    db = duckdb.connect()
    db.execute("CREATE TABLE projects AS SELECT unnest($1) AS id, 'name' AS name", [PROJECTS])
    db.execute(
        "CREATE TABLE cdx_records AS SELECT 'cdx-' || i AS id, $1[1 + i % 4] AS project_id, 'd' || (i % 5) AS domain, "
        "[200, 301, 404][1 + i % 3] AS status_code FROM range(200) t(i)",
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
    assert " AS c" in sql
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
    with pytest.raises(InvalidArgument, match="only queries can be scoped; got INSERT"):
        scope_sql("INSERT INTO cdx_records VALUES (1)", ["p1"], PROJECT_COLUMNS)


# -- every node that can hold a table: VALUES, PIVOT, UNPIVOT, LATERAL, set operations -------

_OTHER_COLUMN = {"cdx_records": "domain", "content_analytics": "page_id", "projects": "name", "domains": "domain"}


@pytest.fixture(scope="module")
def truth(con: duckdb.DuckDBPyConnection) -> Callable[[frozenset[str]], duckdb.DuckDBPyConnection]:
    """A database holding only the rows of some projects: what a scoped caller must see."""
    made: dict[frozenset[str], duckdb.DuckDBPyConnection] = {}

    def database(allowed: frozenset[str]) -> duckdb.DuckDBPyConnection:
        if allowed not in made:
            db = made[allowed] = duckdb.connect()
            for table, column in _SOURCES.items():
                rows = con.sql(f"SELECT * FROM {table} WHERE {column} IN (SELECT unnest($1::VARCHAR[]))",
                               params=[sorted(allowed)]).to_arrow_table()  # fmt: skip
                db.register("_rows", rows)
                db.execute(f"CREATE TABLE {table} AS SELECT * FROM _rows")
                db.unregister("_rows")
        return made[allowed]

    yield database
    for db in made.values():
        db.close()


@st.composite
def relations(draw: st.DrawFn, depth: int = 0) -> str:
    """A query with one VARCHAR column `pid`, built from the nodes that hold tables."""
    table = draw(st.sampled_from(sorted(_SOURCES)))
    column, other = _SOURCES[table], _OTHER_COLUMN[table]
    name = draw(st.sampled_from([table, f'"{table}"', f"main.{table}", table.upper(), f'"{table.title()}"']))
    leaves = {
        "plain": f"SELECT t.{column} AS pid FROM {name} t",
        "pivot": f"SELECT {column} AS pid FROM (PIVOT {name} ON {other} USING count(*) GROUP BY {column})",
        "unpivot": f"SELECT v AS pid FROM (UNPIVOT {name} ON {column} INTO NAME k VALUE v)",
        "values": f"SELECT pid FROM (VALUES ((SELECT min({column}) FROM {name})), "
        f"((SELECT max({column}) FROM {name}))) AS v(pid)",
        "lateral": f"SELECT l.pid FROM (VALUES (1)) AS o(x), LATERAL (SELECT t.{column} AS pid FROM {name} t "
        "WHERE o.x = 1) AS l",
    }
    shapes = [*leaves, "subquery", "set", "cte", "cte_shadow", "in", "pivot_of", "lateral_of"]
    shape = draw(st.sampled_from(shapes if depth < 2 else list(leaves)))
    if shape in leaves:
        return leaves[shape]
    inner = draw(relations(depth + 1))  # type: ignore[call-arg]
    if shape == "subquery":
        return f"SELECT s.pid FROM ({inner}) s"
    if shape == "set":
        operator = draw(st.sampled_from(["UNION", "UNION ALL", "EXCEPT", "INTERSECT ALL"]))
        other_relation = draw(relations(depth + 1))  # type: ignore[call-arg]
        return f"SELECT pid FROM ({inner}) a {operator} SELECT pid FROM ({other_relation}) b"
    if shape == "cte":
        return f"WITH q AS ({inner}) SELECT pid FROM q"
    if shape == "cte_shadow":  # a CTE named like a table, and a CTE reading the table of its own name
        return (
            f"WITH {table} AS ({inner}), x AS (SELECT {column} AS pid FROM main.{table}) SELECT pid FROM {table} "
            "UNION ALL SELECT pid FROM x"
        )
    if shape == "in":
        return f"SELECT project_id AS pid FROM cdx_records WHERE project_id IN (SELECT pid FROM ({inner}) x)"
    if shape == "pivot_of":
        return f"SELECT pid FROM (PIVOT ({inner}) AS src ON pid USING count(*) GROUP BY pid)"
    return f"SELECT l.pid FROM (SELECT 1 AS x) o, LATERAL ({inner}) AS l"


@st.composite
def statements(draw: st.DrawFn) -> str:
    inner = draw(relations())
    shape = draw(st.sampled_from(["rows", "values", "count", "scalar"]))
    if shape == "rows":
        return inner
    if shape == "values":
        listed = f"(SELECT string_agg(DISTINCT pid, ',' ORDER BY pid) FROM ({inner}) b)"
        return f"VALUES ((SELECT count(*) FROM ({inner}) a), {listed})"
    if shape == "count":
        return f"SELECT count(*) AS n, count(DISTINCT pid) AS d FROM ({inner}) s"
    return f"SELECT (SELECT max(pid) FROM ({inner}) s) AS m"


def _rows(db: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[object, ...]] | str:
    try:
        return sorted(db.sql(sql).fetchall(), key=repr)
    except duckdb.Error as exc:
        return type(exc).__name__


@settings(max_examples=300, deadline=None)
@given(query=statements(), allowed=st.lists(st.sampled_from(PROJECTS), max_size=3, unique=True))
def test_scoping_matches_the_rows_of_the_allowed_projects_alone(
    con: duckdb.DuckDBPyConnection,
    truth: Callable[[frozenset[str]], duckdb.DuckDBPyConnection],
    query: str,
    allowed: list[str],
) -> None:
    checked = check_read_only(query, lambda name: name in _SOURCES)
    assert checked.tables  # the guard saw the tables it lets through
    scoped = scope_sql(query, allowed, PROJECT_COLUMNS)
    assert _rows(con, scoped) == _rows(truth(frozenset(allowed)), query)


@pytest.mark.parametrize(
    "sql",
    [
        "VALUES ((SELECT count(*) FROM cdx_records))",
        "SELECT * FROM (PIVOT cdx_records ON project_id USING count(*) GROUP BY status_code)",
        "SELECT count(*) FROM (UNPIVOT cdx_records ON status_code INTO NAME k VALUE v)",
        "PIVOT cdx_records ON project_id USING count(*)",
        "SELECT * FROM cdx_records PIVOT (count(*) FOR project_id IN ('p1', 'p2', 'p3', 'p''4'))",
        "WITH RECURSIVE r AS (SELECT 0 AS i UNION ALL SELECT i + 1 FROM r WHERE i < (SELECT count(*) FROM cdx_records))"
        " SELECT max(i) FROM r",
    ],
)
def test_scoping_reaches_tables_outside_select_sources(
    con: duckdb.DuckDBPyConnection, truth: Callable[[frozenset[str]], duckdb.DuckDBPyConnection], sql: str
) -> None:
    assert check_read_only(sql, lambda name: name in _SOURCES).tables == ("cdx_records",)
    assert _rows(con, scope_sql(sql, ["p2"], PROJECT_COLUMNS)) == _rows(truth(frozenset({"p2"})), sql)
