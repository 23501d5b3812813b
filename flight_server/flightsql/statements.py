"""Flight SQL statements as the project's commands: qualified names and parameters.

Flight SQL clients see catalogs and schemas (see metadata.py): `duckdb.main.<table>`,
`postgres.public.<table>` and `<catalog>.analytics.<view>` for the parameterless named
queries. A statement names tables that way or plainly; before it reaches the executor,
qualifiers are stripped on the sqlglot tree and become the engine hint, and a query
that is exactly `SELECT * FROM analytics.<view>` becomes that named query. The result
is the same `Command` a JSON client would send, so router, cache, scoping, limits and
audit treat both alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp

from flight_server.catalog import Catalog
from flight_server.commands import Command
from flight_server.errors import InvalidArgument
from flight_server.flightsql.catalogs import ANALYTICS, DUCKDB, MAIN, POSTGRES, PUBLIC, view_name

# the schema each engine's tables live in, as the metadata shows them
ENGINE_SCHEMAS = {DUCKDB: MAIN, POSTGRES: PUBLIC}
_QUALIFIED = re.compile(r'[\w"`]\s*\.\s*[A-Za-z_"`]')  # a dot between names, not in a number


def statement_command(text: str, catalog: Catalog, params: list[Any] | dict[str, Any] | None = None) -> Command:
    """The command a Flight SQL statement runs as (see module docstring)."""
    if "?" not in text and not _QUALIFIED.search(text):  # nothing to rewrite: skip the parse
        return Command("sql", text, params or [])
    try:
        tree = sqlglot.parse_one(text, read="duckdb")
    except sqlglot.errors.ParseError:
        return Command("sql", text, params or [])  # the executor's SQL policy words the error
    if tree is None:
        return Command("sql", text, params or [])
    engines: set[str] = set()
    views: list[exp.Table] = []
    changed = _number_placeholders(tree)
    for table in tree.find_all(exp.Table):
        qualifier_catalog, schema = table.catalog.lower(), table.db.lower()
        if not qualifier_catalog and not schema:
            continue
        if qualifier_catalog and qualifier_catalog not in ENGINE_SCHEMAS:
            raise InvalidArgument(
                f"unknown catalog '{table.catalog[:40]}'; this server has catalogs {', '.join(ENGINE_SCHEMAS)}"
            )
        if schema == ANALYTICS:
            views.append(table)
            continue
        allowed = [ENGINE_SCHEMAS[qualifier_catalog]] if qualifier_catalog else list(ENGINE_SCHEMAS.values())
        if schema not in allowed:
            raise InvalidArgument(
                f"unknown schema '{table.db[:40]}' for table '{table.name[:60]}'; use {' or '.join(allowed)}"
            )
        engines.add(qualifier_catalog or next(e for e, s in ENGINE_SCHEMAS.items() if s == schema))
        table.set("catalog", None)
        table.set("db", None)
        changed = True
    if views:
        return _named_view(tree, views, catalog, params)
    engine = engines.pop() if len(engines) == 1 else "auto"
    return Command("sql", tree.sql(dialect="duckdb") if changed else text, params or [], engine=engine)


def _number_placeholders(tree: Any) -> bool:
    """`?` placeholders become `$1`, `$2`, ... in order (the form every engine path takes)."""
    anonymous = [p for p in tree.find_all(exp.Placeholder, bfs=False) if not p.args.get("this")]
    for number, node in enumerate(anonymous, start=1):
        node.replace(exp.Placeholder(this=str(number)))
    return bool(anonymous)


def _named_view(
    tree: Any, views: list[exp.Table], catalog: Catalog, params: list[Any] | dict[str, Any] | None
) -> Command:
    table = views[0]
    only_star = (
        isinstance(tree, exp.Select)
        and len(tree.expressions) == 1
        and isinstance(tree.expressions[0], exp.Star)
        and all(not value for key, value in tree.args.items() if key not in ("expressions", "from_", "from"))
        and len(views) == 1
        and len(list(tree.find_all(exp.Table))) == 1
    )
    if not only_star:
        raise InvalidArgument(
            "analytics views run only as SELECT * FROM analytics.<view>; "
            "read the result, or use the named query's parameters through a JSON command"
        )
    if params:
        raise InvalidArgument("analytics views take no parameters")
    names = {view_name(name): name for name in catalog.names()}
    name = names.get(table.name.lower())
    if name is None:
        raise InvalidArgument(f"unknown analytics view '{table.name[:60]}'; GetTables lists them")
    if any(p.required for p in catalog.get(name).params):
        raise InvalidArgument(f"'{name}' needs parameters; run it as a JSON command with its parameters")
    engine = table.catalog.lower() or "auto"
    return Command("query", name, {}, engine=engine if engine in ENGINE_SCHEMAS else "auto")


_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.In, exp.Between, exp.Like, exp.ILike)
SchemaOf = Callable[[exp.Table], "pa.Schema | None"]


def parameter_schema(text: str, schema_of: SchemaOf | None = None) -> pa.Schema:
    """The statement's parameters: one nullable field per placeholder.

    `?` placeholders are named 1, 2, ... in order; `$n` by their number and `$name` by
    their name. A placeholder compared with a column (`=`, `<`, `IN`, `BETWEEN`, `LIKE`,
    ...) takes that column's type, found through `schema_of(table)`; any other is a
    string, which the engine casts.
    """
    try:
        tree = sqlglot.parse_one(text, read="duckdb")
    except sqlglot.errors.ParseError:
        return pa.schema([])
    names: list[str] = []
    types: dict[str, pa.DataType] = {}
    positional = 0
    for node in tree.find_all(exp.Placeholder, bfs=False) if tree is not None else []:
        label = str(node.args.get("this") or "")
        if not label:
            positional += 1
            label = str(positional)
        if label not in names:
            names.append(label)
        kind = _compared_type(tree, node, schema_of) if schema_of is not None else None
        if kind is not None:
            types.setdefault(label, kind)
    if all(n.isdigit() for n in names):
        names = sorted(names, key=int)
    return pa.schema([pa.field(n, types.get(n, pa.string())) for n in names])


def _compared_type(tree: Any, node: exp.Placeholder, schema_of: SchemaOf) -> pa.DataType | None:
    """The type of the column a placeholder is compared with, when there is one."""
    comparison = node.parent
    if isinstance(comparison, exp.Tuple):  # x IN (?, ?)
        comparison = comparison.parent
    if not isinstance(comparison, _COMPARISONS):
        return None
    column = comparison.this
    if not isinstance(column, exp.Column):
        column = comparison.args.get("expression")
    if not isinstance(column, exp.Column):
        return None
    tables = list(tree.find_all(exp.Table))
    if column.table:
        tables = [t for t in tables if column.table.lower() in (t.alias_or_name.lower(), t.name.lower())]
    for table in tables if len(tables) == 1 else []:
        schema = schema_of(table)
        if schema is not None and column.name in schema.names:
            return schema.field(column.name).type
    return None


def bind_rows(table: pa.Table, schema: pa.Schema) -> list[list[Any] | dict[str, Any]]:
    """Parameter rows of a bind: positional lists, or objects for named parameters."""
    named = any(not f.name.isdigit() for f in schema)
    if schema and table.num_columns != len(schema):
        raise InvalidArgument(f"the statement takes {len(schema)} parameter(s) but {table.num_columns} were bound")
    rows = [list(row) for row in zip(*(column.to_pylist() for column in table.columns), strict=True)]
    if named:
        return [dict(zip(schema.names, row, strict=True)) for row in rows]
    return list(rows)
