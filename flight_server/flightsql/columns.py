"""Arrow schemas of tables, with the Flight SQL column metadata on every field.

The schema is what a `SELECT *` of the table returns on its engine (for a named query,
its result schema), and each field carries the `ARROW:FLIGHT:SQL:*` keys: catalog,
schema and table name, the engine's type name, precision and scale where they apply,
and whether the column is auto-incremented, case sensitive, read-only (always: the
server refuses updates) and searchable. Columns the schema marks secret
(flight_server.security.access: `users.hashed_password`, `user_sessions.session_token`) are never
part of a schema, whatever the caller or the database role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from flight_server.context import RequestContext
from flight_server.flightsql.catalogs import (
    ANALYTICS,
    DUCKDB,
    MAIN,
    PUBLIC,
    TableEntry,
    fetch_rows,
    named_query_schema,
    quote,
)
from flight_server.flightsql.xdbc import arrow_type_name, column_size

if TYPE_CHECKING:
    from flight_server.flightsql.deps import FlightSqlDeps

PREFIX = "ARROW:FLIGHT:SQL:"

_DUCKDB_COLUMNS = f"""
SELECT table_name, column_name, data_type AS type_name, numeric_precision, numeric_scale,
       character_maximum_length, coalesce(column_default LIKE 'nextval(%', false) AS auto_increment
FROM duckdb_columns()
WHERE database_name = current_database() AND schema_name = '{MAIN}' AND NOT internal
ORDER BY table_name, column_index
"""

# information_schema.columns lists only the columns the connected role may use
_POSTGRES_COLUMNS = f"""
SELECT table_name::text, column_name::text,
       CASE data_type WHEN 'ARRAY' THEN substr(udt_name, 2) || '[]' WHEN 'USER-DEFINED' THEN udt_name::text
            ELSE data_type::text END AS type_name,
       numeric_precision::int, numeric_scale::int, character_maximum_length::int,
       (is_identity = 'YES' OR coalesce(column_default LIKE 'nextval(%', false)) AS auto_increment
FROM information_schema.columns
WHERE table_schema = '{PUBLIC}'
ORDER BY table_name, ordinal_position
"""


@dataclass(frozen=True)
class ColumnInfo:
    """What the engine's catalog says about a column."""

    type_name: str
    precision: int | None = None
    scale: int | None = None
    auto_increment: bool = False


def _flag(value: bool) -> str:
    return "1" if value else "0"


def annotate(schema: pa.Schema, entry: TableEntry, columns: dict[str, ColumnInfo] | None = None) -> pa.Schema:
    """`schema` with the Flight SQL column metadata on each field."""
    fields = []
    for field in schema:
        info = (columns or {}).get(field.name) or ColumnInfo(arrow_type_name(field.type))
        data_type = field.type
        precision = info.precision if info.precision is not None else column_size(data_type)
        scale = info.scale if info.scale is not None else getattr(data_type, "scale", None)
        text = pa.types.is_string(data_type) or pa.types.is_large_string(data_type)
        meta = {
            "CATALOG_NAME": entry.catalog,
            "DB_SCHEMA_NAME": entry.db_schema,
            "TABLE_NAME": entry.name,
            "TYPE_NAME": info.type_name,
            "IS_AUTO_INCREMENT": _flag(info.auto_increment),
            "IS_CASE_SENSITIVE": _flag(text or pa.types.is_string_view(data_type)),
            "IS_READ_ONLY": "1",
            "IS_SEARCHABLE": "1",
        }
        if precision is not None:
            meta["PRECISION"] = str(precision)
        if scale is not None:
            meta["SCALE"] = str(scale)
        existing = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
        fields.append(field.with_metadata({**existing, **{PREFIX + k: v for k, v in meta.items()}}))
    return pa.schema(fields, metadata=schema.metadata)


def _column_infos(rows: list[dict[str, Any]], table: str, hidden: frozenset[str]) -> dict[str, ColumnInfo]:
    out = {}
    for row in rows:
        if row["table_name"] != table or row["column_name"] in hidden:
            continue
        decimal = row["type_name"].upper().startswith(("DECIMAL", "NUMERIC"))
        out[row["column_name"]] = ColumnInfo(
            type_name=row["type_name"],
            precision=row["numeric_precision"] if decimal else row["character_maximum_length"],
            scale=row["numeric_scale"] if decimal else None,
            auto_increment=bool(row["auto_increment"]),
        )
    return out


def table_schemas(deps: FlightSqlDeps, ctx: RequestContext, entries: list[TableEntry]) -> list[pa.Schema]:
    """The annotated schema of each entry, in order (one catalog query per engine)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    out = []
    for entry in entries:
        if entry.db_schema == ANALYTICS:
            out.append(annotate(named_query_schema(deps, entry), entry))
            continue
        if entry.engine not in rows:
            engine = deps.duckdb if entry.engine == DUCKDB else deps.postgres
            assert engine is not None
            rows[entry.engine] = fetch_rows(
                engine, ctx, _DUCKDB_COLUMNS if entry.engine == DUCKDB else _POSTGRES_COLUMNS
            )
        columns = _column_infos(rows[entry.engine], entry.name, deps.access.secret.get(entry.name, frozenset()))
        out.append(annotate(_engine_schema(deps, entry, list(columns)), entry, columns))
    return out


def _engine_schema(deps: FlightSqlDeps, entry: TableEntry, columns: list[str]) -> pa.Schema:
    if entry.engine == DUCKDB:
        return deps.duckdb.schema(f"SELECT * FROM {MAIN}.{quote(entry.target)}", None)
    assert deps.postgres is not None
    if not columns:  # the reader role may see none of its columns
        return pa.schema([])
    listed = ", ".join(quote(c) for c in columns)
    return deps.postgres.schema_native(f"SELECT {listed} FROM {PUBLIC}.{quote(entry.target)}", None)
