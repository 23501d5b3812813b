"""Read-only SQL policy: raw SQL is parsed with sqlglot before any engine sees it.

One statement, a query (SELECT, WITH, VALUES, set operations), reading only tables the
server knows (or its own CTEs) and a short list of harmless table functions. DDL, DML,
PRAGMA, SET, ATTACH, COPY, INSTALL/LOAD, EXPORT and every file or network function are
refused. The locked-down DuckDB configuration is the second wall behind this one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError, TokenError
from sqlglot.optimizer.scope import traverse_scope

from flight_server.errors import InvalidArgument

# Table functions a query may read from: they touch no file, network or setting.
SAFE_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})

# Scalar or table functions never allowed, wherever they appear.
_FORBIDDEN_FUNCTION = re.compile(
    r"^(read_\w+|\w+_scan|scan_\w+|glob|sniff_csv|parquet_\w+|query|query_table|getenv|"
    r"current_setting|duckdb_secrets|which_secret|load_aws_credentials|\w*extension\w*|"
    r"pragma_\w+|checkpoint|force_checkpoint|\w+_metadata|iceberg_\w+|delta_\w+|"
    r"sqlite_\w+|postgres_\w+|mysql_\w+|httpfs_\w+)$",
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

_ALLOWED_ROOTS = (exp.Select, exp.SetOperation, exp.Values, exp.Subquery)


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
) -> CheckedQuery:
    """Parse `sql`, enforce the read-only policy and list the tables it reads.

    `known_table(name)` says whether a table or view of that (lower-case) name exists in
    some engine; any other name is refused, which also closes DuckDB's replacement scans
    (`FROM 'file.csv'`). `syntax_error(sql)` gives the engine's own parser message,
    which is more useful to the user than sqlglot's when the SQL does not parse.
    """
    if not sql or not sql.strip():
        raise InvalidArgument("empty SQL; send one SELECT statement")
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
        raise InvalidArgument(f"only read-only queries (SELECT, WITH, VALUES) are allowed; got {tree.key.upper()}")
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            raise InvalidArgument(f"{node.key.upper()} is not allowed: the server is read-only")
        if isinstance(node, exp.Func) and _FORBIDDEN_FUNCTION.match(_function_name(node)):
            raise InvalidArgument(f"function {_function_name(node)}() is not allowed")
    try:  # the tables a scope reads; other table names are references to CTEs
        real = {
            id(src) for scope in traverse_scope(tree) for src in scope.sources.values() if isinstance(src, exp.Table)
        }
    except SqlglotError as exc:
        raise InvalidArgument(f"cannot analyse the query: {str(exc).splitlines()[0]}") from None
    tables: list[str] = []
    for table in tree.find_all(exp.Table):
        source = table.this
        if not isinstance(source, exp.Identifier):
            name = _function_name(source) if isinstance(source, exp.Expression) else "?"
            if name.lower() not in SAFE_TABLE_FUNCTIONS:
                raise InvalidArgument(f"table function {name}() is not allowed")
            continue
        name = table.name.lower()
        schema = table.db.lower()
        if table.catalog or schema not in ("", "main"):
            raise InvalidArgument(f"table {table.sql(dialect='duckdb')} is not in any engine")
        if id(table) not in real:
            continue
        if not known_table(name):
            raise InvalidArgument(f"unknown table '{name:.80}'; ListFlights shows the datasets")
        if name not in tables:
            tables.append(name)
    placeholders = sum(1 for _ in tree.find_all(exp.Placeholder))
    return CheckedQuery(sql=sql, tables=tuple(tables), placeholders=placeholders, tree=tree)
