"""Read-only SQL policy: raw SQL is parsed with sqlglot before any engine sees it.

One statement, a query (SELECT, WITH, VALUES, PIVOT/UNPIVOT, set operations), reading
only tables the server knows (or its own CTEs) and a short list of harmless table
functions. Every table reference counts, wherever it sits in the tree (a scalar subquery
of VALUES, the source of a PIVOT, a LATERAL join): `flight_server.security.sqltables` lists them,
and the same list is what scoping filters, so nothing is read that was not checked.
DDL, DML, PRAGMA, SET, ATTACH, COPY, INSTALL/LOAD, EXPORT, every file or network
function and PostgreSQL's functions that run SQL text or read server files are refused.
The locked-down DuckDB configuration and PostgreSQL's grants are the walls behind this one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from flight_server.errors import InvalidArgument
from flight_server.security.sqlsize import Params, check_generated_sizes
from flight_server.security.sqltables import table_references

# Table functions a query may read from: they touch no file, network or setting.
SAFE_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})

# Scalar or table functions never allowed, wherever they appear.
_FORBIDDEN_FUNCTION = re.compile(
    r"^(read_\w+|\w+_scan|scan_\w+|glob|sniff_csv|parquet_\w+|query|query_table|getenv|"
    r"current_setting|duckdb_secrets|which_secret|load_aws_credentials|\w*extension\w*|"
    r"pragma_\w+|checkpoint|force_checkpoint|\w+_metadata|iceberg_\w+|delta_\w+|"
    r"sqlite_\w+|postgres_\w+|mysql_\w+|httpfs_\w+|"
    # PostgreSQL: SQL text run with the server's rights, server files, settings, large objects
    r"(query|table|cursor|schema|database)_to_\w+|pg_(?!typeof$|sleep$)\w+|lo_\w+|dblink\w*|set_config)$",
    re.IGNORECASE,
)

_FORBIDDEN_NODES: tuple[type[exp.Expression], ...] = tuple(
    getattr(exp, name)
    for name in (
        "Insert",
        "Update",
        "Delete",
        "Merge",
        "Create",
        "Drop",
        "Alter",
        "TruncateTable",
        "Command",
        "Pragma",
        "Set",
        "Copy",
        "Attach",
        "Detach",
        "Install",
        "Use",
        "Into",
        "Describe",
        "Show",
        "Summarize",
        "Transaction",
        "Commit",
        "Rollback",
        "LoadData",
        "Export",
        "Analyze",
        "Grant",
        "Revoke",
        "Comment",
        "Cache",
        "Uncache",
        "Refresh",
    )
    if hasattr(exp, name)
)

_ALLOWED_ROOTS = (exp.Select, exp.SetOperation, exp.Values, exp.Subquery, exp.Pivot)


@dataclass(frozen=True)
class CheckedQuery:
    """A query that passed the policy, with the tables it reads."""

    sql: str
    tables: tuple[str, ...]
    placeholders: int
    tree: exp.Expression


def _function_name(node: Any) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name)
    return str(node.sql_name() if isinstance(node, exp.Func) else node.key).lower()


def check_read_only(
    sql: str,
    known_table: Callable[[str], bool],
    syntax_error: Callable[[str], str | None] | None = None,
    *,
    max_generated: int | None = None,
    params: Params = None,
) -> CheckedQuery:
    """Parse `sql`, enforce the read-only policy and list the tables it reads.

    `known_table(name)` says whether a table or view of that (lower-case) name exists in
    some engine; any other name is refused, which also closes DuckDB's replacement scans
    (`FROM 'file.csv'`). `syntax_error(sql)` gives the engine's own parser message,
    which is more useful to the user than sqlglot's when the SQL does not parse.
    `max_generated` bounds what constant calls build at planning (flight_server.security.sqlsize),
    with `params` as the values of the placeholders.
    """
    if not sql or not sql.strip():
        raise InvalidArgument("empty SQL; send one SELECT statement")
    _require_unicode(sql)
    tree = _parse_one(sql, syntax_error)
    _refuse_writes(tree)
    _check_table_sources(tree)
    if max_generated is not None:
        check_generated_sizes(tree, max_generated, params)
    tables = _read_tables(tree, known_table)
    placeholders = sum(1 for _ in tree.find_all(exp.Placeholder))
    return CheckedQuery(sql=sql, tables=tuple(tables), placeholders=placeholders, tree=tree)


def _parse_one(sql: str, syntax_error: Callable[[str], str | None] | None) -> exp.Expression:
    """The one read-only statement in `sql`; INVALID_ARGUMENT for bad syntax, several statements or a write."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except (ParseError, TokenError) as exc:
        engine_message = syntax_error(sql) if syntax_error else None
        if engine_message:
            raise InvalidArgument(engine_message) from None
        raise InvalidArgument(f"SQL syntax error: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise InvalidArgument(f"send exactly one SQL statement (got {len(statements)})")
    tree = statements[0]
    if not isinstance(tree, _ALLOWED_ROOTS):
        raise InvalidArgument(
            f"only read-only queries (SELECT, WITH, VALUES, PIVOT) are allowed; got {tree.key.upper()}"
        )
    return tree


def _refuse_writes(tree: exp.Expression) -> None:
    """INVALID_ARGUMENT for any forbidden node or function anywhere in `tree`."""
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            raise InvalidArgument(f"{node.key.upper()} is not allowed: the server is read-only")
        if isinstance(node, exp.Func) and _FORBIDDEN_FUNCTION.match(_function_name(node)):
            raise InvalidArgument(f"function {_function_name(node)}() is not allowed")


def _check_table_sources(tree: exp.Expression) -> None:
    """INVALID_ARGUMENT for a table function not known safe, or a table in another catalog or schema."""
    for table in tree.find_all(exp.Table):
        source = table.this
        if not isinstance(source, exp.Identifier):
            name = _function_name(source) if isinstance(source, exp.Expression) else "?"
            if name.lower() not in SAFE_TABLE_FUNCTIONS:
                raise InvalidArgument(f"table function {name}() is not allowed")
            continue
        if table.catalog or table.db.lower() not in ("", "main"):
            raise InvalidArgument(f"table {table.sql(dialect='duckdb'):.80} is not in any engine")


def _read_tables(tree: exp.Expression, known_table: Callable[[str], bool]) -> list[str]:
    """The (lower-case) tables `tree` reads, in first-seen order; INVALID_ARGUMENT for an unknown one."""
    tables: list[str] = []
    for table in table_references(tree):
        name = table.name.lower()
        if not known_table(name):
            raise InvalidArgument(f"unknown table '{name:.80}'; ListFlights shows the datasets")
        if name not in tables:
            tables.append(name)
    return tables


def _require_unicode(sql: str) -> None:
    """SQL text must be encodable as UTF-8: a lone surrogate (e.g. from JSON's \\ud800) is not."""
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            f"the SQL has an invalid character (a lone surrogate) at position {exc.start}; send valid Unicode text"
        ) from None
