"""The read-only SQL policy, without a server: what passes, what is refused, and why."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flight_server.errors import InvalidArgument
from flight_server.security.sqlguard import check_read_only

KNOWN = {"cdx_records", "content_analytics", "performance_metrics"}


def known(name: str) -> bool:
    return name in KNOWN


@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ("SELECT * FROM cdx_records WHERE domain = $1", ("cdx_records",)),
        ("FROM cdx_records", ("cdx_records",)),
        ("SELECT * FROM main.cdx_records", ("cdx_records",)),
        ('SELECT * FROM "CDX_Records"', ("cdx_records",)),
        ("WITH cdx_records AS (SELECT 1 AS x) SELECT * FROM cdx_records", ()),
        ("SELECT 1 UNION ALL SELECT 2", ()),
        ("VALUES (1), (2)", ()),
        ("SELECT * FROM range(10)", ()),
        (
            "SELECT a.domain FROM cdx_records a JOIN content_analytics b ON a.id = b.page_id",
            ("cdx_records", "content_analytics"),
        ),
        ("SELECT (SELECT max(value) FROM performance_metrics) AS m", ("performance_metrics",)),
        ("VALUES ((SELECT count(*) FROM cdx_records))", ("cdx_records",)),
        ("SELECT * FROM (PIVOT cdx_records ON project_id USING count(*) GROUP BY status_code)", ("cdx_records",)),
        ("SELECT count(*) FROM (UNPIVOT cdx_records ON status_code INTO NAME k VALUE v)", ("cdx_records",)),
        ("PIVOT cdx_records ON project_id USING count(*)", ("cdx_records",)),
        ("SELECT * FROM range(3) r, LATERAL (SELECT * FROM content_analytics) c", ("content_analytics",)),
        ("WITH cdx_records AS (SELECT * FROM cdx_records) SELECT * FROM cdx_records", ("cdx_records",)),
        ("WITH a AS (SELECT * FROM cdx_records), cdx_records AS (SELECT 1) SELECT * FROM a", ("cdx_records",)),
        ('WITH "CDX_RECORDS" AS (SELECT 1 AS x) SELECT * FROM cdx_records', ("cdx_records",)),
        ("WITH RECURSIVE r AS (SELECT 1 AS i UNION ALL SELECT i + 1 FROM r WHERE i < 3) SELECT * FROM r", ()),
    ],
)
def test_sqlguard_allows_queries_and_lists_tables(sql: str, tables: tuple[str, ...]) -> None:
    assert check_read_only(sql, known).tables == tables


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("INSERT INTO cdx_records VALUES (1)", "INSERT"),
        ("UPDATE cdx_records SET domain = 'x'", "UPDATE"),
        ("DELETE FROM cdx_records", "DELETE"),
        ("CREATE TABLE t AS SELECT 1", "CREATE"),
        ("DROP TABLE cdx_records", "DROP"),
        ("ALTER TABLE cdx_records ADD COLUMN x INT", "ALTER"),
        ("SELECT * INTO t2 FROM cdx_records", "INTO"),
        ("PRAGMA version", "PRAGMA"),
        ("SET threads = 1", "SET"),
        ("ATTACH 'x.db'", "ATTACH"),
        ("COPY (SELECT 1) TO 'x.csv'", "COPY"),
        ("INSTALL httpfs", "INSTALL"),
        ("LOAD httpfs", "COMMAND"),
        ("CALL pragma_version()", "COMMAND"),
        ("SELECT 1; SELECT 2", "exactly one"),
        ("SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
        ("SELECT * FROM read_parquet('x/*.parquet')", "read_parquet"),
        ("SELECT * FROM glob('*')", "glob"),
        ("SELECT * FROM '/etc/passwd'", "unknown table"),
        ('SELECT * FROM "data.csv"', "unknown table"),
        ("SELECT * FROM duckdb_settings()", "duckdb_settings"),
        ("SELECT getenv('HOME')", "getenv"),
        ("SELECT * FROM query('SELECT 1')", "query"),
        ("SELECT * FROM other.main.cdx_records", "not in any engine"),
        ("SELECT * FROM information_schema.tables", "not in any engine"),
        ("SELECT * FROM users", "unknown table 'users'"),
        ("", "empty"),
        ("selec 1", "syntax"),
        # the lock-down behind a node sqlglot's scopes do not list
        ("VALUES ((SELECT count(*) FROM pg_settings))", "unknown table 'pg_settings'"),
        ("VALUES ((SELECT max(path) FROM duckdb_databases()))", "duckdb_databases"),
        ("VALUES ((SELECT max(path) FROM duckdb_databases))", "unknown table 'duckdb_databases'"),
        ("VALUES ((SELECT count(*) FROM sqlite_master))", "unknown table 'sqlite_master'"),
        ("VALUES ((SELECT count(*) FROM 'data/datasets/cdx_records/*.parquet'))", "unknown table"),
        ("SELECT * FROM (PIVOT 'data/datasets/manifest.json' ON x USING count(*))", "unknown table"),
        ("SELECT * FROM (UNPIVOT pg_settings ON setting INTO NAME k VALUE v)", "unknown table 'pg_settings'"),
        ("SELECT * FROM range(1) r, LATERAL (SELECT * FROM duckdb_settings()) s", "duckdb_settings"),
        ("WITH RECURSIVE t AS (SELECT * FROM t) SELECT * FROM t", "unknown table 't'"),
        ('WITH "Q" AS (SELECT 1 AS x) SELECT * FROM q', "unknown table 'q'"),  # PostgreSQL reads table q
        # PostgreSQL functions that run SQL text with the server's rights or read its files
        ("SELECT query_to_xml('SELECT * FROM users', true, true, '')", "query_to_xml"),
        ("SELECT table_to_xml('users', true, true, '')", "table_to_xml"),
        ("SELECT pg_read_file('/etc/passwd')", "pg_read_file"),
        ("SELECT lo_import('/etc/passwd')", "lo_import"),
        ("SELECT set_config('role', 'postgres', false)", "set_config"),
        ("SELECT '\ud800'", "lone surrogate"),
    ],
)
def test_sqlguard_refuses_with_reason(sql: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_read_only(sql, known)


def test_sqlguard_prefers_the_engine_parser_message() -> None:
    with pytest.raises(InvalidArgument, match="engine says no"):
        check_read_only("selec 1", known, syntax_error=lambda sql: "engine says no")


@given(
    st.sampled_from(
        [
            "INSERT INTO cdx_records VALUES (1)",
            "DROP TABLE cdx_records",
            "COPY cdx_records TO 'x'",
            "SET threads = 1",
        ]
    ),
    st.sampled_from(["SELECT 1", "SELECT * FROM cdx_records"]),
)
def test_sqlguard_never_passes_a_write_hidden_among_statements(write: str, read: str) -> None:
    for script in (f"{read}; {write}", f"{write}; {read}", f"{read};\n{write};"):
        with pytest.raises(InvalidArgument):
            check_read_only(script, known)
