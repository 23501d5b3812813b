"""DuckDB-dialect SQL as PostgreSQL SQL (sqlglot).

Every engine takes the server's one SQL dialect, DuckDB's; the PostgreSQL engine and the
hybrid engine's pushed-down filters translate it here. Bound values become numbered
PostgreSQL parameters (`$1`, `$2`, ...) cast to an explicit type, so that PostgreSQL never
has to guess one; a NULL value is inlined, since PostgreSQL cannot type a NULL parameter.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from flight_server.engines.base import Params
from flight_server.errors import InvalidArgument

# explicit types for bound values, so PostgreSQL never has to guess them
_PG_TYPES: dict[type, str] = {
    str: "TEXT", int: "BIGINT", float: "DOUBLE PRECISION", bool: "BOOLEAN",
    dt.date: "DATE", dt.datetime: "TIMESTAMP",
}  # fmt: skip


def bind_for_postgres(expression: Any, params: Params, values: list[Any], unqualify: bool = True) -> Any:
    """The expression for PostgreSQL: placeholders renumbered and typed, their values
    appended to `values`; columns unqualified when it is a filter pushed into a
    single-table fetch."""
    out = expression.copy()
    for column in out.find_all(exp.Column) if unqualify else ():
        column.set("table", None)
    for placeholder in list(out.find_all(exp.Placeholder)):
        name = placeholder.name
        if isinstance(params, dict):
            value = params[name]
        elif name.isdigit() and params is not None:
            value = list(params)[int(name) - 1]
        else:
            raise InvalidArgument(f"parameter ${name} has no value")
        if value is None:
            placeholder.replace(exp.Null())  # PostgreSQL cannot type a NULL parameter
            continue
        values.append(value)
        parameter = exp.Parameter(this=exp.Literal.number(len(values)))
        cast_to = _PG_TYPES.get(type(value))
        placeholder.replace(exp.cast(parameter, cast_to) if cast_to else parameter)
    return out


def to_postgres(sql: str, params: Params) -> tuple[str, list[Any]]:
    """DuckDB-dialect SQL as PostgreSQL SQL with positional parameters ($1, $2, ...)."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except SqlglotError as exc:
        raise InvalidArgument(f"cannot translate the query for PostgreSQL: {str(exc).splitlines()[0]}") from None
    values: list[Any] = []
    tree = bind_for_postgres(tree, params, values, unqualify=False)
    return tree.sql(dialect="postgres"), values
