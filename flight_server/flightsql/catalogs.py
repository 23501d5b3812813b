"""What Flight SQL clients browse: catalogs, database schemas and tables, by engine.

Catalog `duckdb` holds schema `main` (the analytics tables and ingested datasets, as
DuckDB has them) and schema `analytics` (each named query that needs no parameter, as a
view named with '.' replaced by '_'). Catalog `postgres` holds schema `public` (the OLTP
tables), when PostgreSQL is configured. Internal schemas (DuckDB's `base`, system and
temporary schemas, PostgreSQL's catalogs) are never listed.

Name filters are SQL LIKE patterns: `%` any run of characters, `_` one character, and a
backslash makes the next character literal.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from flight_server.context import RequestContext
from flight_server.engines.base import Engine
from flight_server.engines.postgres import PostgresEngine
from flight_server.errors import NotFound, Unavailable

if TYPE_CHECKING:
    from flight_server.flightsql.deps import FlightSqlDeps

logger = logging.getLogger(__name__)

DUCKDB, POSTGRES = "duckdb", "postgres"
MAIN, ANALYTICS, PUBLIC = "main", "analytics", "public"
TABLE, VIEW = "TABLE", "VIEW"
TABLE_TYPES = (TABLE, VIEW)
ESCAPE = "\\"

_DUCKDB_TABLES = f"""
SELECT table_name AS name, '{TABLE}' AS kind FROM duckdb_tables()
WHERE database_name = current_database() AND schema_name = '{MAIN}' AND NOT internal AND NOT temporary
UNION ALL
SELECT view_name, '{VIEW}' FROM duckdb_views()
WHERE database_name = current_database() AND schema_name = '{MAIN}' AND NOT internal AND NOT temporary
"""

_POSTGRES_TABLES = f"""
SELECT c.relname AS name, CASE WHEN c.relkind IN ('v', 'm') THEN '{VIEW}' ELSE '{TABLE}' END AS kind
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = '{PUBLIC}' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
"""


@dataclass(frozen=True)
class TableEntry:
    """A table as clients see it, and where it lives."""

    catalog: str
    db_schema: str
    name: str
    table_type: str
    engine: str  # "duckdb", "postgres" or "analytics" (a named query)
    target: str  # the name to use in SQL on the engine, or the named query's name

    @property
    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.catalog, self.db_schema, self.name, self.table_type)


# -- LIKE patterns --------------------------------------------------------------------------


@dataclass(frozen=True)
class LikePattern:
    """A LIKE pattern as its segments between `%`, each a fixed-width regex of literals and `.`.

    Matching takes linear time in the value for each segment, whatever the pattern: the
    first segment must match at the start, the last at the end, and each middle one is
    searched leftmost after the previous. Taking the leftmost place of each middle segment
    is never wrong, since any later place leaves less room for the rest; runs of `%` are
    empty middle segments and skipped. (A translation to one regex of `.*` parts would
    backtrack: `%%%%%%%%%%#` costs seconds on a 20-character name.)
    """

    segments: tuple[tuple[re.Pattern[str], int], ...]  # (regex, width) in pattern order

    @classmethod
    def parse(cls, pattern: str) -> LikePattern:
        """Split at unescaped `%`; `_` is any one character; ESCAPE makes the next one literal."""
        segments: list[tuple[re.Pattern[str], int]] = []
        parts: list[str] = []
        i = 0
        while i <= len(pattern):
            char = pattern[i] if i < len(pattern) else "%"
            if char == ESCAPE and i + 1 < len(pattern):
                parts.append(re.escape(pattern[i + 1]))
                i += 2
                continue
            if char == "%":
                segments.append((re.compile("".join(parts), re.DOTALL), len(parts)))
                parts = []
            else:
                parts.append("." if char == "_" else re.escape(char))
            i += 1
        return cls(tuple(segments))

    def matches(self, value: str) -> bool:
        (first, first_width), *rest = self.segments
        if not rest:
            return first.fullmatch(value) is not None
        *middle, (last, last_width) = rest
        end = len(value) - last_width  # where the last segment must start
        if end < first_width or first.match(value) is None:
            return False
        position = first_width
        for segment, width in middle:
            if width:
                found = segment.search(value, position, end)
                if found is None:
                    return False
                position = found.end()
        return last.fullmatch(value, end) is not None


@functools.lru_cache(maxsize=256)
def like_pattern(pattern: str) -> LikePattern:
    return LikePattern.parse(pattern)


def like(pattern: str | None, value: str) -> bool:
    """Whether `value` matches the LIKE pattern; no pattern matches everything."""
    return pattern is None or like_pattern(pattern).matches(value)


# -- engines ---------------------------------------------------------------------------------


def fetch_rows(engine: Engine, ctx: RequestContext, sql: str) -> list[dict[str, Any]]:
    """Run a catalog query (constant SQL, no parameters) on an engine; its rows are few."""
    # a query id of its own: the request's id may belong to a statement that is running;
    # catalog queries for PostgreSQL are written in its own SQL, not translated
    run = engine.execute_native if isinstance(engine, PostgresEngine) else engine.execute
    result = run(sql, None, query_id=f"{ctx.query_id}-metadata", deadline_s=ctx.deadline_s)
    try:
        table = result.reader.read_all()
    except BaseException as exc:  # noqa: BLE001 - the engine's error, translated and re-raised
        raise result.translate(exc) from None
    finally:
        result.close()
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def catalog_names(deps: FlightSqlDeps) -> list[str]:
    return sorted([DUCKDB, POSTGRES] if deps.postgres is not None else [DUCKDB])


def schema_names(deps: FlightSqlDeps) -> list[tuple[str, str]]:
    pairs = [(DUCKDB, MAIN), (DUCKDB, ANALYTICS)]
    if deps.postgres is not None:
        pairs.append((POSTGRES, PUBLIC))
    return sorted(pairs)


def view_name(query_name: str) -> str:
    """The view name of a named query: `domains.top` -> `domains_top`."""
    return query_name.replace(".", "_")


def analytics_views(deps: FlightSqlDeps) -> list[TableEntry]:
    """Named queries without required parameters whose result schema is known."""
    out = []
    for query in deps.catalog:
        if any(p.required for p in query.params) or deps.executor.named_schema(query.name) is None:
            continue
        out.append(TableEntry(DUCKDB, ANALYTICS, view_name(query.name), VIEW, "analytics", query.name))
    return out


def _engine_tables(deps: FlightSqlDeps, ctx: RequestContext, catalog: str) -> list[TableEntry]:
    if catalog == DUCKDB:
        rows = fetch_rows(deps.duckdb, ctx, _DUCKDB_TABLES)
        return [TableEntry(DUCKDB, MAIN, r["name"], r["kind"], DUCKDB, r["name"]) for r in rows]
    assert deps.postgres is not None
    rows = fetch_rows(deps.postgres, ctx, _POSTGRES_TABLES)
    return [TableEntry(POSTGRES, PUBLIC, r["name"], r["kind"], POSTGRES, r["name"]) for r in rows]


def list_tables(
    deps: FlightSqlDeps,
    ctx: RequestContext,
    catalog: str | None = None,
    db_schema: str | None = None,
    db_schema_pattern: str | None = None,
) -> list[TableEntry]:
    """Every table of the catalog and schema (None: any), sorted as GetTables wants them.

    `db_schema` is matched exactly, `db_schema_pattern` as a LIKE pattern; only the
    engines of the schemas they leave are asked. When PostgreSQL is down, a listing of
    every catalog leaves its tables out (and logs it); a listing of the postgres catalog
    (or its schema) alone fails with UNAVAILABLE.
    """
    entries: list[TableEntry] = []
    for cat, schema in schema_names(deps):
        if catalog not in (None, cat) or db_schema not in (None, schema) or not like(db_schema_pattern, schema):
            continue
        if schema == ANALYTICS:
            entries.extend(analytics_views(deps))
            continue
        try:
            entries.extend(_engine_tables(deps, ctx, cat))
        except Unavailable as exc:
            if catalog == cat or db_schema == schema:
                raise
            logger.warning("tables of a catalog left out", extra={"fields": {"catalog": cat, "error": str(exc)}})
    return sorted(entries, key=lambda e: e.sort_key)


_PRECEDENCE = {(DUCKDB, MAIN): 0, (POSTGRES, PUBLIC): 1, (DUCKDB, ANALYTICS): 2}


def find_table(
    deps: FlightSqlDeps, ctx: RequestContext, catalog: str | None, db_schema: str | None, table: str
) -> TableEntry:
    """The table a (catalog, schema, name) reference means; NotFound when there is none.

    Without catalog or schema, tables win over views of named queries, and DuckDB over
    PostgreSQL (as for a table both engines hold). Exact names win over names that
    match only ignoring case.
    """
    entries = sorted(list_tables(deps, ctx, catalog, db_schema), key=lambda e: _PRECEDENCE[e.catalog, e.db_schema])
    for matches in ([e for e in entries if e.name == table], [e for e in entries if e.name.lower() == table.lower()]):
        if matches:
            return matches[0]
    shown = ".".join(part for part in (catalog, db_schema, table) if part is not None)
    raise NotFound(f"unknown table '{shown:.120}'; GetTables lists the tables")


def named_query_schema(deps: FlightSqlDeps, entry: TableEntry) -> pa.Schema:
    schema = deps.executor.named_schema(entry.target)
    if schema is None:  # the engine went away since the listing
        raise NotFound(f"the view {entry.name} is not available now")
    return schema
