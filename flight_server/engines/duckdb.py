"""Embedded DuckDB: the analytics engine.

One database per server; every request gets its own cursor, which is how DuckDB is
used safely from many gRPC handler threads. Results stream as Arrow record batches
straight from DuckDB's reader. After start-up (schema, optional demo data) the
database is locked down: no external access except the data directory, no extension
installs or auto-loading, and a locked configuration that queries cannot change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from flight_server.context import RunningQueries, RunningQuery
from flight_server.engines.base import Params, QueryResult
from flight_server.engines.duckdb_schema import BASE_SCHEMA, apply_schema
from flight_server.errors import (
    Cancelled,
    ChronoError,
    InternalError,
    InvalidArgument,
    ResourceExhausted,
    TimedOut,
    one_line,
)
from flight_server.settings import Settings
from flight_server.startup import open_duckdb, prepare_data_dir

logger = logging.getLogger(__name__)

_USER_ERRORS = (
    duckdb.ParserException,
    duckdb.BinderException,
    duckdb.CatalogException,
    duckdb.ConversionException,
    duckdb.InvalidInputException,
    duckdb.OutOfRangeException,
    duckdb.TypeMismatchException,
    duckdb.NotImplementedException,
    duckdb.PermissionException,
    duckdb.InvalidTypeException,
    duckdb.SyntaxException,
)


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class DuckDBEngine:
    """The embedded DuckDB engine (see module docstring)."""

    name = "duckdb"

    def __init__(
        self,
        settings: Settings,
        running: RunningQueries,
        prepare: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    ) -> None:
        self._settings = settings
        self._running = running
        self._batch_rows = settings.duckdb.batch_rows
        self._deadline_s = settings.duckdb.query_deadline_s
        data_dir = prepare_data_dir(settings.data_dir)
        settings.spill_dir.mkdir(parents=True, exist_ok=True)
        self._db = open_duckdb(
            settings.duckdb_path,
            config={
                "threads": settings.duckdb.threads,
                "memory_limit": settings.duckdb.memory_limit,
                "temp_directory": str(settings.spill_dir.resolve()),
                "max_temp_directory_size": settings.duckdb.max_temp_directory_size,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "allow_community_extensions": False,
            },
        )
        self._tables: dict[str, str] = {}
        self.dataset_rows: Callable[[], dict[str, int]] = dict  # rows of ingested Parquet files
        try:
            apply_schema(self._db, settings.schemas_dir)
            if prepare is not None:
                prepare(self._db)
            self._lock_down(data_dir)
            self.refresh_tables()
        except BaseException:  # a failed start-up (or Ctrl-C in demo data) leaves the file unlocked
            self._db.close()
            raise

    def _lock_down(self, data_dir: Path) -> None:
        # footers of the dataset files are read once, not per query: ingested files are
        # never rewritten in place (new names, then the manifest is swapped)
        self._db.execute("SET parquet_metadata_cache = true")
        self._db.execute(f"SET allowed_directories = [{_sql_literal(str(data_dir))}]")
        self._db.execute("SET enable_external_access = false")
        self._db.execute("SET lock_configuration = true")

    # -- Engine interface -------------------------------------------------------------

    def execute(
        self,
        sql: str,
        params: Params,
        *,
        query_id: str,
        deadline_s: float | None = None,
        relations: dict[str, pa.Table] | None = None,
    ) -> QueryResult:
        """Start `sql`; `relations` are Arrow tables the query may read by name."""
        cursor = self._db.cursor()
        for name, table in (relations or {}).items():
            cursor.register(name, table)
        running = RunningQuery(
            query_id=query_id,
            engine=self.name,
            sql=sql,
            deadline=time.monotonic() + (deadline_s or self._deadline_s),
            interrupt=cursor.interrupt,
        )
        self._running.add(running)

        def release() -> None:
            self._running.remove(query_id)
            try:
                cursor.interrupt()
                cursor.close()
            except duckdb.Error:  # already closed or finished
                pass

        try:
            relation = cursor.sql(sql, params=params)
            if relation is None:
                raise InvalidArgument("the statement returned no result; send a query")
            reader = relation.to_arrow_reader(self._batch_rows)
        except BaseException as exc:  # noqa: BLE001 - every driver error is translated and re-raised
            release()
            raise self.translate(exc, running) from None
        return QueryResult(reader, release, lambda exc: self.translate(exc, running))

    def schema(
        self,
        sql: str,
        params: Params,
        relations: dict[str, pa.Table] | None = None,
        *,
        query_id: str | None = None,
        deadline_s: float | None = None,
    ) -> pa.Schema:
        """The result schema; with a `query_id`, planning runs under the deadline (see Engine)."""
        cursor = self._db.cursor()
        for name, table in (relations or {}).items():
            cursor.register(name, table)
        running = None
        if query_id is not None:
            deadline = time.monotonic() + (deadline_s or self._deadline_s)
            running = RunningQuery(query_id, self.name, sql, deadline, cursor.interrupt)
            self._running.add(running)
        try:
            relation = cursor.sql(sql, params=params)
            if relation is None:
                raise InvalidArgument("the statement returned no result; send a query")
            schema: pa.Schema = relation.limit(0).to_arrow_table().schema
            return schema
        except BaseException as exc:  # noqa: BLE001 - every driver error is translated and re-raised
            raise self.translate(exc, running) from None
        finally:
            if running is not None:
                self._running.remove(running.query_id)
            cursor.close()

    def explain(self, sql: str, params: Params, relations: dict[str, pa.Table] | None = None) -> str:
        cursor = self._db.cursor()
        for name, table in (relations or {}).items():
            cursor.register(name, table)
        try:
            relation = cursor.sql(f"EXPLAIN {sql}", params=params)
            rows = relation.fetchall() if relation is not None else []
            return "\n".join(str(row[1]) for row in rows)
        except BaseException as exc:  # noqa: BLE001 - every driver error is translated and re-raised
            raise self.translate(exc, None) from None
        finally:
            cursor.close()

    def plan_details(self, sql: str, params: Params) -> dict[str, Any]:
        """Nothing beyond the plan: DuckDB runs the query as given."""
        return {}

    def syntax_error(self, sql: str) -> str | None:
        """DuckDB's own parser message for SQL that does not parse, else None."""
        cursor = self._db.cursor()
        try:
            cursor.extract_statements(sql)
        except duckdb.Error as exc:
            return one_line(str(exc))
        finally:
            cursor.close()
        return None

    def tables(self) -> dict[str, str]:
        return dict(self._tables)

    def refresh_tables(self) -> dict[str, str]:
        cursor = self._db.cursor()
        try:
            rows = cursor.sql(
                "SELECT table_name, 'table' FROM duckdb_tables() WHERE schema_name = 'main' "
                "AND NOT internal UNION ALL SELECT view_name, 'view' FROM duckdb_views() "
                "WHERE schema_name = 'main' AND NOT internal"
            ).fetchall()
        finally:
            cursor.close()
        self._tables = {str(name).lower(): str(kind) for name, kind in rows}
        return self.tables()

    def columns(self) -> dict[str, dict[str, str]]:
        """Every table's and view's columns with their DuckDB types."""
        cursor = self._db.cursor()
        try:
            rows = cursor.sql(
                "SELECT table_name, column_name, data_type FROM duckdb_columns() "
                "WHERE schema_name = 'main' AND NOT internal ORDER BY table_name, column_index"
            ).fetchall()
        finally:
            cursor.close()
        out: dict[str, dict[str, str]] = {}
        for table, column, kind in rows:
            out.setdefault(str(table).lower(), {})[str(column)] = str(kind)
        return out

    def row_counts(self) -> dict[str, int]:
        """Rows of each table, and of each dataset: its base table plus its Parquet files."""
        cursor = self._db.cursor()
        try:
            rows = cursor.sql(
                "SELECT table_name, estimated_size FROM duckdb_tables() WHERE schema_name IN ('main', $1)",
                params=[BASE_SCHEMA],
            ).fetchall()
        finally:
            cursor.close()
        counts = {str(name).lower(): int(size) for name, size in rows}
        for name, n in self.dataset_rows().items():
            counts[name] = counts.get(name, 0) + n
        return counts

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor on the database, for the dataset registry's views."""
        return self._db.cursor()

    def health(self) -> dict[str, Any]:
        cursor = self._db.cursor()
        try:
            started = time.perf_counter()
            cursor.sql("SELECT 1").fetchall()
            memory = cursor.sql("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchall()
            return {
                "status": "ok",
                "ping_ms": round((time.perf_counter() - started) * 1000, 3),
                "memory_bytes": int(memory[0][0] or 0),
                "threads": self._settings.duckdb.threads,
                "memory_limit": self._settings.duckdb.memory_limit,
                "tables": len(self._tables),
            }
        finally:
            cursor.close()

    def cancel(self, query_id: str) -> bool:
        return self._running.cancel(query_id)

    def close(self) -> None:
        self._db.close()

    # -- errors ---------------------------------------------------------------------------

    def translate(self, exc: BaseException, running: RunningQuery | None) -> BaseException:
        """A ChronoError for an exception DuckDB raised (or the exception itself)."""
        if isinstance(exc, ChronoError):
            return exc
        message = one_line(str(exc))
        interrupted = isinstance(exc, duckdb.InterruptException) or "INTERRUPT" in message
        if interrupted and running is not None and running.stop_reason == "deadline":
            return TimedOut(
                f"query {running.query_id} exceeded its deadline of "
                f"{running.deadline - running.started:.3g} s and was stopped; narrow it or raise the deadline"
            )
        if interrupted:
            return Cancelled("the query was cancelled")
        if isinstance(exc, duckdb.OutOfMemoryException):
            return ResourceExhausted(f"DuckDB ran out of memory: {message}")
        if isinstance(exc, _USER_ERRORS):
            return InvalidArgument(message)
        if isinstance(exc, duckdb.Error):
            logger.error("duckdb error: %s", message)
            return InternalError(f"DuckDB failed: {message}")
        return exc
