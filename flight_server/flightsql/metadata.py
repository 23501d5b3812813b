"""Flight SQL metadata commands: each a function returning an Arrow table in the spec's schema.

The Flight SQL dispatch decodes a `CommandGet*` message and calls the function of the
same name here; `*_schema()` answers GetFlightInfo and GetSchema without any work.
Every function checks the caller's `metadata` permission (every role has it).

### Flight SQL metadata

Flight SQL drivers (ADBC, JDBC, ODBC; DBeaver, Superset, Tableau) browse the server
with the metadata commands:

- **Catalogs** (`GetCatalogs`): `duckdb`, and `postgres` when PostgreSQL is configured.
  While PostgreSQL is down, listings of every catalog leave its tables out; asking for
  the `postgres` catalog alone answers `UNAVAILABLE`.
- **Schemas** (`GetDbSchemas`): `duckdb.main` holds the analytics tables
  (`cdx_records`, `content_analytics`, `performance_metrics`) and every ingested
  dataset, as DuckDB has them (they are views over the base table and the Parquet
  files, so their type is `VIEW`); `duckdb.analytics` holds the named queries;
  `postgres.public` holds the OLTP tables. Internal schemas (DuckDB's `base`, system
  catalogs, `information_schema`, `pg_catalog`) are never shown.
- **Named queries as views**: every named query whose parameters all have defaults
  appears as a `VIEW` in `duckdb.analytics`, its name with `.` replaced by `_`
  (`domains.top` is `duckdb.analytics.domains_top`); its columns are the query's result
  schema. Queries with required parameters (`domains.timeline`, ...) are not listed.
- **Table types** (`GetTableTypes`): `TABLE` and `VIEW`; the `table_types` filter of
  `GetTables` matches them exactly.
- **Filters** are SQL `LIKE` patterns: `%` any run of characters, `_` one character,
  `\\` makes the next one literal (`cdx\\_%`).
- **Table schemas** (`GetTables` with `include_schema`): the Arrow schema of
  `SELECT *`, each field with the `ARROW:FLIGHT:SQL:*` metadata (catalog, schema,
  table, engine type name, precision, scale, auto-increment, case sensitivity,
  read-only, searchable). `users.hashed_password` is never part of it.
- **Keys**: primary keys (`GetPrimaryKeys`) and foreign keys (`GetExportedKeys`,
  `GetImportedKeys`, `GetCrossReference`) come from PostgreSQL's `pg_constraint`, with
  their update and delete rules, and from DuckDB's constraints.
- **Types** (`GetXdbcTypeInfo`): the SQL types results use (BOOLEAN, integers, REAL,
  DOUBLE, DECIMAL, VARCHAR, binary types, DATE, TIME, TIMESTAMP [WITH TIME ZONE],
  INTERVAL) with their JDBC/ODBC codes.
- **SqlInfo** (`GetSqlInfo`): server name `Chrono Flight`, its version and the Arrow
  version; read-only (`FLIGHT_SQL_SERVER_READ_ONLY` true: no DDL, no updates, no
  transactions; rows arrive through bulk ingest, which is supported); cancellation
  supported; every id when none is asked for, unknown ids left out; the DuckDB
  dialect: `"` quotes identifiers, which are case insensitive, nulls sort last, `\\`
  escapes LIKE patterns, DuckDB's keywords and function lists, supported conversions,
  full outer joins, subqueries of every kind, UNION and UNION ALL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from flight_server.context import RequestContext
from flight_server.flightsql import catalogs, columns, keys, sql_info, xdbc
from flight_server.security.middleware import require

if TYPE_CHECKING:
    from flight_server.flightsql.deps import FlightSqlDeps

__all__ = [
    "ResolvedTable",
    "catalogs_schema",
    "db_schemas_schema",
    "foreign_keys_schema",
    "get_catalogs",
    "get_cross_reference",
    "get_db_schemas",
    "get_exported_keys",
    "get_imported_keys",
    "get_primary_keys",
    "get_sql_info",
    "get_table_types",
    "get_tables",
    "get_xdbc_type_info",
    "primary_keys_schema",
    "resolve_table",
    "sql_info_schema",
    "table_types_schema",
    "tables_schema",
    "xdbc_type_info_schema",
]


def _text(name: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, pa.utf8(), nullable=nullable)


def _allowed(ctx: RequestContext) -> None:
    require(ctx.caller, "metadata", "read metadata")


def _table(schema: pa.Schema, rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


# -- schemas (FlightSql.proto; field order of the reference implementations) ----------------


def catalogs_schema() -> pa.Schema:
    return pa.schema([_text("catalog_name", nullable=False)])


def db_schemas_schema() -> pa.Schema:
    return pa.schema([_text("catalog_name"), _text("db_schema_name", nullable=False)])


def tables_schema(include_schema: bool) -> pa.Schema:
    fields = [
        _text("catalog_name"),
        _text("db_schema_name"),
        _text("table_name", nullable=False),
        _text("table_type", nullable=False),
    ]
    if include_schema:
        fields.append(pa.field("table_schema", pa.binary(), nullable=False))
    return pa.schema(fields)


def table_types_schema() -> pa.Schema:
    return pa.schema([_text("table_type", nullable=False)])


def sql_info_schema() -> pa.Schema:
    value = pa.dense_union(
        [
            pa.field("string_value", pa.utf8(), nullable=False),
            pa.field("bool_value", pa.bool_(), nullable=False),
            pa.field("bigint_value", pa.int64(), nullable=False),
            pa.field("int32_bitmask", pa.int32(), nullable=False),
            pa.field("string_list", pa.list_(pa.utf8()), nullable=False),
            pa.field("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32())), nullable=False),
        ]
    )
    return pa.schema([pa.field("info_name", pa.uint32(), nullable=False), pa.field("value", value, nullable=False)])


def xdbc_type_info_schema() -> pa.Schema:
    int32, boolean = pa.int32(), pa.bool_()
    return pa.schema(
        [
            _text("type_name", nullable=False),
            pa.field("data_type", int32, nullable=False),
            pa.field("column_size", int32),
            _text("literal_prefix"),
            _text("literal_suffix"),
            pa.field("create_params", pa.list_(pa.field("item", pa.utf8(), nullable=False))),
            pa.field("nullable", int32, nullable=False),
            pa.field("case_sensitive", boolean, nullable=False),
            pa.field("searchable", int32, nullable=False),
            pa.field("unsigned_attribute", boolean),
            pa.field("fixed_prec_scale", boolean, nullable=False),
            pa.field("auto_increment", boolean),
            _text("local_type_name"),
            pa.field("minimum_scale", int32),
            pa.field("maximum_scale", int32),
            pa.field("sql_data_type", int32, nullable=False),
            pa.field("datetime_subcode", int32),
            pa.field("num_prec_radix", int32),
            pa.field("interval_precision", int32),
        ]
    )


def _column_reference(prefix: str = "") -> list[pa.Field]:
    """Catalog and schema (nullable), table and column (not null) names, as key results have them."""
    return [
        _text(f"{prefix}catalog_name"),
        _text(f"{prefix}db_schema_name"),
        _text(f"{prefix}table_name", nullable=False),
        _text(f"{prefix}column_name", nullable=False),
    ]


def primary_keys_schema() -> pa.Schema:
    """key_sequence comes before key_name, as in the C++, Java and Go implementations."""
    return pa.schema([*_column_reference(), pa.field("key_sequence", pa.int32(), nullable=False), _text("key_name")])


def foreign_keys_schema() -> pa.Schema:
    """Shared by GetExportedKeys, GetImportedKeys and GetCrossReference."""
    return pa.schema(
        [
            *_column_reference("pk_"),
            *_column_reference("fk_"),
            pa.field("key_sequence", pa.int32(), nullable=False),
            _text("fk_key_name"),
            _text("pk_key_name"),
            pa.field("update_rule", pa.uint8(), nullable=False),
            pa.field("delete_rule", pa.uint8(), nullable=False),
        ]
    )


# -- commands ----------------------------------------------------------------------------------


def get_catalogs(deps: FlightSqlDeps, ctx: RequestContext) -> pa.Table:
    _allowed(ctx)
    return _table(catalogs_schema(), [{"catalog_name": name} for name in catalogs.catalog_names(deps)])


def get_db_schemas(
    deps: FlightSqlDeps, ctx: RequestContext, catalog: str | None, db_schema_filter_pattern: str | None
) -> pa.Table:
    _allowed(ctx)
    rows = [
        {"catalog_name": cat, "db_schema_name": schema}
        for cat, schema in catalogs.schema_names(deps)
        if catalog in (None, cat) and catalogs.like(db_schema_filter_pattern, schema)
    ]
    return _table(db_schemas_schema(), rows)


def get_tables(
    deps: FlightSqlDeps,
    ctx: RequestContext,
    catalog: str | None,
    db_schema_filter_pattern: str | None,
    table_name_filter_pattern: str | None,
    table_types: list[str],
    include_schema: bool,
) -> pa.Table:
    _allowed(ctx)
    entries = [
        e
        for e in catalogs.list_tables(deps, ctx, catalog, db_schema_pattern=db_schema_filter_pattern)
        if catalogs.like(table_name_filter_pattern, e.name) and (not table_types or e.table_type in table_types)
    ]
    rows: list[dict[str, Any]] = [
        {"catalog_name": e.catalog, "db_schema_name": e.db_schema, "table_name": e.name, "table_type": e.table_type}
        for e in entries
    ]
    if include_schema:
        for row, schema in zip(rows, columns.table_schemas(deps, ctx, entries), strict=True):
            row["table_schema"] = schema.serialize().to_pybytes()
    return _table(tables_schema(include_schema), rows)


def get_table_types(deps: FlightSqlDeps, ctx: RequestContext) -> pa.Table:
    _allowed(ctx)
    return _table(table_types_schema(), [{"table_type": kind} for kind in sorted(catalogs.TABLE_TYPES)])


def get_sql_info(deps: FlightSqlDeps, ctx: RequestContext, info: list[int]) -> pa.Table:
    """The requested SqlInfo ids in request order (all when `info` is empty); unknown ids are left out."""
    _allowed(ctx)
    return sql_info.info_table(sql_info_schema(), sql_info.info_values(deps, ctx, info))


def get_xdbc_type_info(deps: FlightSqlDeps, ctx: RequestContext, data_type: int | None) -> pa.Table:
    _allowed(ctx)
    return _table(xdbc_type_info_schema(), xdbc.type_rows(data_type))


def get_primary_keys(
    deps: FlightSqlDeps, ctx: RequestContext, catalog: str | None, db_schema: str | None, table: str
) -> pa.Table:
    _allowed(ctx)
    found = keys.primary_keys(deps, ctx, catalog, db_schema, table)
    return _table(primary_keys_schema(), [asdict(k) for k in found])


def get_exported_keys(
    deps: FlightSqlDeps, ctx: RequestContext, catalog: str | None, db_schema: str | None, table: str
) -> pa.Table:
    """Foreign keys that reference `table`'s primary key."""
    return _foreign_keys(deps, ctx, catalog, db_schema, lambda found: keys.exported_keys(found, table))


def get_imported_keys(
    deps: FlightSqlDeps, ctx: RequestContext, catalog: str | None, db_schema: str | None, table: str
) -> pa.Table:
    """Foreign keys of `table`, with the primary keys they reference."""
    return _foreign_keys(deps, ctx, catalog, db_schema, lambda found: keys.imported_keys(found, table))


def get_cross_reference(
    deps: FlightSqlDeps,
    ctx: RequestContext,
    pk_catalog: str | None,
    pk_db_schema: str | None,
    pk_table: str,
    fk_catalog: str | None,
    fk_db_schema: str | None,
    fk_table: str,
) -> pa.Table:
    """Foreign keys of `fk_table` that reference `pk_table`."""

    def choose(found: list[keys.ForeignKeyColumn]) -> list[keys.ForeignKeyColumn]:
        found = [
            k for k in found if fk_catalog in (None, k.fk_catalog_name) and fk_db_schema in (None, k.fk_db_schema_name)
        ]
        return keys.cross_reference(found, pk_table, fk_table)

    return _foreign_keys(deps, ctx, pk_catalog, pk_db_schema, choose)


def _foreign_keys(
    deps: FlightSqlDeps,
    ctx: RequestContext,
    catalog: str | None,
    db_schema: str | None,
    choose: Callable[[list[keys.ForeignKeyColumn]], list[keys.ForeignKeyColumn]],
) -> pa.Table:
    """The foreign keys in the catalog and schema (None: any) that `choose` keeps, in its order."""
    _allowed(ctx)
    found = choose(keys.foreign_keys(deps, ctx, catalog, db_schema))
    return _table(foreign_keys_schema(), [asdict(k) for k in found])


# -- tables for statements -----------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedTable:
    """Where a table reference leads.

    `engine` is "duckdb", "postgres" or "analytics"; `name` is the table's name in SQL
    on that engine, or for "analytics" the named query's name (`domains.top`);
    `schema` is the table's Arrow schema with the Flight SQL column metadata.
    """

    engine: str
    name: str
    schema: pa.Schema


def resolve_table(
    deps: FlightSqlDeps, ctx: RequestContext, catalog: str | None, db_schema: str | None, table: str
) -> ResolvedTable:
    """The table `catalog.db_schema.table` (None parts: any) names; NotFound when unknown."""
    _allowed(ctx)
    entry = catalogs.find_table(deps, ctx, catalog, db_schema, table)
    (schema,) = columns.table_schemas(deps, ctx, [entry])
    return ResolvedTable(entry.engine, entry.target, schema)
