"""PostgreSQL through ADBC: the transactional source of truth.

A bounded pool of ADBC connections; each query runs in a READ ONLY transaction with
`statement_timeout` set from the deadline, and its result streams as an Arrow
`RecordBatchReader` straight from libpq's COPY protocol (never fetched whole). The
connection goes back to the pool when the stream is finished or dropped. A circuit
breaker stops calling PostgreSQL while it is down and probes it again later.

Through the `Engine` interface it takes the server's one SQL dialect, DuckDB's, and
translates it (flight_server.engines.postgres_dialect); the `*_native` methods take
PostgreSQL SQL as written, for callers that write it (the hybrid engine's fetches).

Tables and columns are what PostgreSQL last said, and until it first answers, what
schemas/postgres.sql declares (`declared`): routing and catalogue validation never need
a live connection.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as pg
import pyarrow as pa

from flight_server.context import RunningQueries, RunningQuery
from flight_server.engines.base import Params, QueryResult
from flight_server.engines.breaker import CircuitBreaker
from flight_server.engines.postgres_dialect import to_postgres
from flight_server.errors import (
    Cancelled,
    ChronoError,
    InternalError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    TimedOut,
    Unavailable,
    one_line,
)
from flight_server.settings import PostgresSettings

logger = logging.getLogger(__name__)

# SQLSTATE classes that mean the query is wrong, not that PostgreSQL is unwell
_USER_SQLSTATES = ("22", "23", "25", "28", "2B", "3D", "3F", "42", "0A")


def _sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", "") or "")


def with_connect_timeout(uri: str, seconds: float) -> str:
    """The URI with libpq's connect_timeout set, unless it sets its own."""
    if "connect_timeout=" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}connect_timeout={max(1, round(seconds))}"


def _sqlglot_type(pg_type: str) -> str:
    """A type name sqlglot can read (information_schema says ARRAY and USER-DEFINED)."""
    return {"ARRAY": "TEXT[]", "USER-DEFINED": "TEXT"}.get(pg_type, pg_type)


def _positional(params: Params) -> tuple[Any, ...] | None:
    if params is None:
        return None
    if isinstance(params, dict):
        raise InvalidArgument("PostgreSQL takes positional parameters ($1, $2, ...), not named ones")
    return tuple(params)


class PostgresEngine:
    name = "postgres"

    def __init__(
        self,
        settings: PostgresSettings,
        running: RunningQueries,
        default_deadline_s: float,
        declared: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        if not settings.uri:
            raise ValueError("PostgreSQL is not configured")
        self.settings = settings
        self._uri = settings.reader_uri or settings.uri
        self._running = running
        self._deadline_s = default_deadline_s
        self._pool: queue.LifoQueue[pg.Connection] = queue.LifoQueue()
        self._opened = 0
        self._lock = threading.Lock()
        self.breaker = CircuitBreaker("postgres", settings.breaker_failures, settings.breaker_open_s)
        self._columns: dict[str, dict[str, str]] = {t: dict(c) for t, c in (declared or {}).items()}
        self._tables: dict[str, str] = dict.fromkeys(self._columns, "table")

    # -- connections ---------------------------------------------------------------------

    def _connect(self) -> pg.Connection:
        return pg.connect(with_connect_timeout(self._uri, self.settings.connect_timeout_s), autocommit=True)

    def _acquire(self) -> pg.Connection:
        if not self.breaker.allow():
            raise Unavailable(
                f"PostgreSQL is unavailable (circuit breaker open); retrying in {self.breaker.retry_in_s():.1f} s"
            )
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            may_open = self._opened < self.settings.pool_size
            if may_open:
                self._opened += 1
        if may_open:
            try:
                return self._connect()
            except Exception as exc:  # noqa: BLE001 - the pool slot is given back on any failure, then re-raised
                with self._lock:
                    self._opened -= 1
                self.breaker.failure()
                raise Unavailable(f"PostgreSQL is unavailable: {one_line(str(exc))}") from None
        try:
            return self._pool.get(timeout=self.settings.pool_timeout_s)
        except queue.Empty:
            raise ResourceExhausted(
                f"all {self.settings.pool_size} PostgreSQL connections are busy; retry shortly"
            ) from None

    def _release(self, conn: pg.Connection, healthy: bool) -> None:
        if healthy:
            self._pool.put(conn)
            return
        with self._lock:
            self._opened -= 1
        try:
            conn.close()
        except Exception:  # a broken connection may not close cleanly
            logger.debug("closing a broken PostgreSQL connection failed", exc_info=True)

    # -- Engine interface: the DuckDB dialect, translated (flight_server.engines.postgres_dialect)

    def execute(self, sql: str, params: Params, *, query_id: str, deadline_s: float | None = None) -> QueryResult:
        pg_sql, values = to_postgres(sql, params)
        return self.execute_native(pg_sql, values, query_id=query_id, deadline_s=deadline_s)

    def schema(
        self, sql: str, params: Params, *, query_id: str | None = None, deadline_s: float | None = None
    ) -> pa.Schema:
        pg_sql, values = to_postgres(sql, params)
        return self.schema_native(pg_sql, values)

    def explain(self, sql: str, params: Params) -> str:
        return self.explain_native(*to_postgres(sql, params))

    def plan_details(self, sql: str, params: Params) -> dict[str, Any]:
        """The PostgreSQL SQL and positional parameters the query runs as."""
        pg_sql, values = to_postgres(sql, params)
        return {"postgres_sql": pg_sql, "postgres_params": values}

    # -- native PostgreSQL SQL (positional $n parameters), for callers that write it -----

    def execute_native(
        self, sql: str, params: Params, *, query_id: str, deadline_s: float | None = None
    ) -> QueryResult:
        deadline = deadline_s or self._deadline_s
        conn = self._acquire()
        cursor = conn.cursor()
        running = RunningQuery(
            query_id=query_id,
            engine=self.name,
            sql=sql,
            deadline=time.monotonic() + deadline,
            interrupt=cursor.adbc_cancel,
        )
        self._running.add(running)
        state = {"healthy": True, "released": False}

        def release() -> None:
            if state["released"]:
                return
            state["released"] = True
            self._running.remove(query_id)
            try:
                cursor.adbc_cancel()
                cursor.close()
                with conn.cursor() as rollback:
                    rollback.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - best-effort clean-up: any failure retires the connection
                state["healthy"] = False
            self._release(conn, state["healthy"])

        try:
            cursor.execute("BEGIN READ ONLY")
            cursor.execute(f"SET LOCAL statement_timeout = {max(1, int(deadline * 1000))}")
            cursor.execute(sql, _positional(params))
            reader = cursor.fetch_record_batch()
        except BaseException as exc:  # noqa: BLE001 - every driver error is translated and re-raised
            translated = self.translate(exc, running)
            state["healthy"] = not isinstance(translated, Unavailable)
            release()
            raise translated from None
        self.breaker.success()
        return QueryResult(reader, release, lambda exc: self.translate(exc, running))

    def _with_connection(self, work: Callable[[pg.Cursor], Any]) -> Any:
        conn = self._acquire()
        healthy = True
        try:
            with conn.cursor() as cursor:
                result = work(cursor)
            self.breaker.success()
            return result
        except BaseException as exc:  # noqa: BLE001 - every driver error is translated and re-raised
            translated = self.translate(exc, None)
            healthy = not isinstance(translated, Unavailable)
            raise translated from None
        finally:
            self._release(conn, healthy)

    def schema_native(self, sql: str, params: Params) -> pa.Schema:
        """The result schema from PostgreSQL's describe step (it plans, it does not run the query)."""
        schema: pa.Schema = self._with_connection(lambda cur: cur.adbc_execute_schema(sql, _positional(params)))
        return schema

    def explain_native(self, sql: str, params: Params) -> str:
        def run(cur: pg.Cursor) -> str:
            cur.execute(f"EXPLAIN {sql}", _positional(params))
            return "\n".join(str(row[0]) for row in cur.fetchall())

        return str(self._with_connection(run))

    # -- the rest of the Engine interface -------------------------------------------------

    def tables(self) -> dict[str, str]:
        return dict(self._tables)

    def discover(self) -> dict[str, str]:
        """The tables PostgreSQL has now (Unavailable while it cannot be reached)."""

        def run(cur: pg.Cursor) -> dict[str, str]:
            cur.execute(
                "SELECT table_name, CASE table_type WHEN 'VIEW' THEN 'view' ELSE 'table' END "
                "FROM information_schema.tables WHERE table_schema = 'public'"
            )
            return {str(name).lower(): str(kind) for name, kind in cur.fetchall()}

        self._tables = self._with_connection(run)
        return self.tables()

    def refresh_tables(self) -> dict[str, str]:
        with contextlib.suppress(Unavailable):  # keep the tables we knew; the breaker reports it
            self.discover()
        return self.tables()

    def columns(self) -> dict[str, dict[str, str]]:
        """Every table's columns with their PostgreSQL types (while unavailable: the last known)."""

        def run(cur: pg.Cursor) -> dict[str, dict[str, str]]:
            cur.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
            )
            out: dict[str, dict[str, str]] = {}
            for table, column, kind in cur.fetchall():
                out.setdefault(str(table).lower(), {})[str(column)] = _sqlglot_type(str(kind))
            return out

        with contextlib.suppress(Unavailable):
            self._columns = dict(self._with_connection(run))
        return dict(self._columns)

    def health(self) -> dict[str, Any]:
        started = time.perf_counter()
        self._with_connection(lambda cur: (cur.execute("SELECT 1"), cur.fetchall()))
        return {
            "status": "ok",
            "ping_ms": round((time.perf_counter() - started) * 1000, 3),
            "pool": {"size": self.settings.pool_size, "open": self._opened, "idle": self._pool.qsize()},
            "breaker": self.breaker.snapshot(),
            "tables": len(self._tables),
        }

    def cancel(self, query_id: str) -> bool:
        return self._running.cancel(query_id)

    def close(self) -> None:
        while True:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                break
            try:
                conn.close()
            except Exception:
                logger.debug("closing a PostgreSQL connection failed", exc_info=True)

    # -- errors ----------------------------------------------------------------------------

    def translate(self, exc: BaseException, running: RunningQuery | None) -> BaseException:
        if isinstance(exc, ChronoError):
            return exc
        message = one_line(str(exc).replace("[libpq] ", ""))
        state = _sqlstate(exc)
        if state == "57014" or "canceling statement" in message:
            if "statement timeout" in message or (running is not None and running.stop_reason == "deadline"):
                return TimedOut("the PostgreSQL query exceeded its deadline and was stopped")
            return Cancelled("the PostgreSQL query was cancelled")
        if state == "42501":
            return PermissionDenied(f"PostgreSQL: {message}")
        if state.startswith(_USER_SQLSTATES):
            return InvalidArgument(f"PostgreSQL: {message}")
        if isinstance(exc, adbc_driver_manager.Error | OSError):
            self.breaker.failure()
            return Unavailable(f"PostgreSQL is unavailable: {message}")
        logger.error("postgres error: %s", message)
        return InternalError(f"PostgreSQL failed: {message}")
