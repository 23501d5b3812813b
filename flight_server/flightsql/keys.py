"""Primary and foreign keys, read from the engines' own catalogs.

PostgreSQL's keys come from `pg_constraint` (schema `public`), with the referential
actions as Flight SQL `UpdateDeleteRules` codes; DuckDB's from `duckdb_constraints()`
(schema `main`; DuckDB enforces foreign keys without actions, which is NO ACTION).
Analytics views have no keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flight_server.context import RequestContext
from flight_server.errors import Unavailable
from flight_server.flightsql.catalogs import DUCKDB, MAIN, POSTGRES, PUBLIC, fetch_rows

if TYPE_CHECKING:
    from flight_server.flightsql.deps import FlightSqlDeps

# UpdateDeleteRules (FlightSql.proto) by pg_constraint's action letter
CASCADE, RESTRICT, SET_NULL, NO_ACTION, SET_DEFAULT = 0, 1, 2, 3, 4
_PG_RULES = {"c": CASCADE, "r": RESTRICT, "n": SET_NULL, "a": NO_ACTION, "d": SET_DEFAULT}

_POSTGRES_PRIMARY_KEYS = f"""
SELECT t.relname::text AS table_name, a.attname::text AS column_name, k.ord::int AS key_sequence,
       con.conname::text AS key_name
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class t ON t.oid = con.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
WHERE con.contype = 'p' AND n.nspname = '{PUBLIC}'
"""

_POSTGRES_FOREIGN_KEYS = f"""
SELECT pt.relname::text AS pk_table, pa.attname::text AS pk_column,
       ft.relname::text AS fk_table, fa.attname::text AS fk_column, k.ord::int AS key_sequence,
       con.conname::text AS fk_key_name, pk.conname::text AS pk_key_name,
       con.confupdtype::text AS update_rule, con.confdeltype::text AS delete_rule
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class ft ON ft.oid = con.conrelid
JOIN pg_catalog.pg_namespace fn ON fn.oid = ft.relnamespace
JOIN pg_catalog.pg_class pt ON pt.oid = con.confrelid
JOIN pg_catalog.pg_namespace pn ON pn.oid = pt.relnamespace
CROSS JOIN LATERAL unnest(con.conkey, con.confkey) WITH ORDINALITY AS k(fk_attnum, pk_attnum, ord)
JOIN pg_catalog.pg_attribute fa ON fa.attrelid = con.conrelid AND fa.attnum = k.fk_attnum
JOIN pg_catalog.pg_attribute pa ON pa.attrelid = con.confrelid AND pa.attnum = k.pk_attnum
LEFT JOIN pg_catalog.pg_constraint pk
       ON pk.conrelid = con.confrelid AND pk.conindid = con.conindid AND pk.contype IN ('p', 'u')
WHERE con.contype = 'f' AND fn.nspname = '{PUBLIC}' AND pn.nspname = '{PUBLIC}'
"""

_DUCKDB_CONSTRAINTS = f"""
SELECT table_name, constraint_type, constraint_name, constraint_column_names AS columns,
       referenced_table, referenced_column_names AS referenced_columns
FROM duckdb_constraints()
WHERE database_name = current_database() AND schema_name = '{MAIN}'
  AND constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY')
"""


@dataclass(frozen=True)
class PrimaryKeyColumn:
    """One row of GetPrimaryKeys (fields named as the result's columns)."""

    catalog_name: str
    db_schema_name: str
    table_name: str
    column_name: str
    key_sequence: int
    key_name: str | None


@dataclass(frozen=True)
class ForeignKeyColumn:
    """One row of the foreign key commands (fields named as the result's columns)."""

    pk_catalog_name: str
    pk_db_schema_name: str
    pk_table_name: str
    pk_column_name: str
    fk_catalog_name: str
    fk_db_schema_name: str
    fk_table_name: str
    fk_column_name: str
    key_sequence: int
    fk_key_name: str | None
    pk_key_name: str | None
    update_rule: int
    delete_rule: int


def _foreign_key(place: tuple[str, str], pk: tuple[str, str], fk: tuple[str, str], *rest: Any) -> ForeignKeyColumn:
    """A foreign key column pair within one catalog and schema: (table, column) on each side."""
    return ForeignKeyColumn(*place, *pk, *place, *fk, *rest)


def _places(deps: FlightSqlDeps, catalog: str | None, db_schema: str | None) -> list[tuple[str, str]]:
    """The (catalog, schema) pairs with keys that the filters leave."""
    places = [(DUCKDB, MAIN)] + ([(POSTGRES, PUBLIC)] if deps.postgres is not None else [])
    return [(c, s) for c, s in places if catalog in (None, c) and db_schema in (None, s)]


def _duckdb_constraints(deps: FlightSqlDeps, ctx: RequestContext) -> list[dict[str, Any]]:
    return fetch_rows(deps.duckdb, ctx, _DUCKDB_CONSTRAINTS)


def primary_keys(
    deps: FlightSqlDeps, ctx: RequestContext, catalog: str | None, db_schema: str | None, table: str
) -> list[PrimaryKeyColumn]:
    out: list[PrimaryKeyColumn] = []
    for place in _places(deps, catalog, db_schema):
        if place[0] == DUCKDB:
            for row in _duckdb_constraints(deps, ctx):
                if row["constraint_type"] == "PRIMARY KEY" and row["table_name"] == table:
                    for seq, column in enumerate(row["columns"], start=1):
                        out.append(PrimaryKeyColumn(*place, table, column, seq, row["constraint_name"]))
            continue
        for row in _optional(deps, ctx, _POSTGRES_PRIMARY_KEYS, catalog):
            if row["table_name"] == table:
                out.append(PrimaryKeyColumn(*place, table, row["column_name"], row["key_sequence"], row["key_name"]))
    return sorted(out, key=lambda k: (k.catalog_name, k.db_schema_name, k.table_name, k.key_name or "", k.key_sequence))


def foreign_keys(
    deps: FlightSqlDeps, ctx: RequestContext, catalog: str | None, db_schema: str | None
) -> list[ForeignKeyColumn]:
    """Every foreign key column pair in the catalogs and schemas the filters leave."""
    out: list[ForeignKeyColumn] = []
    for place in _places(deps, catalog, db_schema):
        if place[0] == DUCKDB:
            rows = _duckdb_constraints(deps, ctx)
            names = {r["table_name"]: r["constraint_name"] for r in rows if r["constraint_type"] == "PRIMARY KEY"}
            for row in rows:
                if row["constraint_type"] != "FOREIGN KEY":
                    continue
                pk_table = row["referenced_table"]
                pairs = zip(row["referenced_columns"], row["columns"], strict=True)
                for seq, (pk_column, fk_column) in enumerate(pairs, start=1):
                    out.append(
                        _foreign_key(
                            place, (pk_table, pk_column), (row["table_name"], fk_column), seq,
                            row["constraint_name"], names.get(pk_table), NO_ACTION, NO_ACTION,
                        )
                    )  # fmt: skip
            continue
        for row in _optional(deps, ctx, _POSTGRES_FOREIGN_KEYS, catalog):
            out.append(
                _foreign_key(
                    place, (row["pk_table"], row["pk_column"]), (row["fk_table"], row["fk_column"]),
                    row["key_sequence"], row["fk_key_name"], row["pk_key_name"],
                    _PG_RULES[row["update_rule"]], _PG_RULES[row["delete_rule"]],
                )
            )  # fmt: skip
    return out


def _optional(deps: FlightSqlDeps, ctx: RequestContext, sql: str, catalog: str | None) -> list[dict[str, Any]]:
    """PostgreSQL catalog rows; none while it is down, unless the postgres catalog was asked for."""
    assert deps.postgres is not None
    try:
        return fetch_rows(deps.postgres, ctx, sql)
    except Unavailable:
        if catalog == POSTGRES:
            raise
        return []


def exported_keys(keys: list[ForeignKeyColumn], table: str) -> list[ForeignKeyColumn]:
    """Foreign keys that reference `table`, ordered by the foreign key side."""
    chosen = [k for k in keys if k.pk_table_name == table]
    return sorted(
        chosen,
        key=lambda k: (k.fk_catalog_name, k.fk_db_schema_name, k.fk_table_name, k.fk_key_name or "", k.key_sequence),
    )


def imported_keys(keys: list[ForeignKeyColumn], table: str) -> list[ForeignKeyColumn]:
    """Foreign keys of `table`, ordered by the referenced (primary key) side."""
    return cross_reference(keys, None, table)


def cross_reference(keys: list[ForeignKeyColumn], pk_table: str | None, fk_table: str) -> list[ForeignKeyColumn]:
    """Foreign keys of `fk_table` that reference `pk_table` (None: any), ordered by the primary key side."""
    chosen = [k for k in keys if pk_table in (None, k.pk_table_name) and k.fk_table_name == fk_table]
    return sorted(
        chosen,
        key=lambda k: (k.pk_catalog_name, k.pk_db_schema_name, k.pk_table_name, k.pk_key_name or "", k.key_sequence),
    )
