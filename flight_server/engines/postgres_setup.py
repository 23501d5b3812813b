"""Bringing PostgreSQL into service: its schema, its tables, then what depends on them.

PostgreSQL is optional and may be down when the server starts; the server starts anyway.
`PostgresSetup.attempt` applies the schema (schemas/postgres.sql and postgres_roles.sql,
when `FLIGHT_POSTGRES__APPLY_SCHEMA`) and lists PostgreSQL's tables live through the
engine. At start-up one attempt runs inline (`start_up`), so a reachable PostgreSQL is
set up before the catalogue is validated against it, exactly as if nothing could fail.

An unreachable one opens the engine's circuit breaker at once: PostgreSQL routes fail
fast with UNAVAILABLE (or are answered from the DuckDB replicas), the catalogue is
validated against the declared schema instead, and health reports PostgreSQL down.
`retry_in_background` then tries again every `FLIGHT_POSTGRES__SETUP_RETRY_S` (on its
own connection as the schema owner, not through the breaker) until an attempt succeeds,
closes the breaker (PostgreSQL has just answered), runs `on_ready` once (table discovery, the catalogue plans that need
PostgreSQL, waking the sync) and ends. The sync never starts a cycle before the set-up is
done (`require`), so it never tracks tables of a database whose schema is not applied.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as pg

from flight_server.engines import postgres_schema as oltp
from flight_server.engines.postgres import PostgresEngine, with_connect_timeout
from flight_server.errors import Unavailable, one_line
from flight_server.settings import Settings

logger = logging.getLogger(__name__)


def _unreachable(exc: BaseException) -> bool:
    """A failure to reach PostgreSQL (retry later), not an error of the SQL it was sent."""
    state = str(getattr(exc, "sqlstate", "") or "")
    return isinstance(exc, OSError) or not state or state.startswith(("08", "57P"))


class PostgresSetup:
    """See the module docstring. `ready` is set once, for good, when PostgreSQL is set up."""

    def __init__(self, settings: Settings, engine: PostgresEngine) -> None:
        assert settings.postgres.uri is not None
        self._settings = settings
        self._engine = engine
        self._uri = with_connect_timeout(settings.postgres.uri, settings.postgres.connect_timeout_s)
        self._schema_done = not settings.postgres.apply_schema
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.last_error: str | None = None
        self.attempts = 0

    def start_up(self) -> bool:
        """The inline attempt at start-up; when it fails, the engine's breaker opens at once."""
        if self.attempt():
            return True
        logger.warning(
            "postgres unreachable at start-up; serving DuckDB and the replicas, retrying in the background",
            extra={"fields": {"error": self.last_error, "retry_s": self._settings.postgres.setup_retry_s}},
        )
        self._engine.breaker.open_now()
        return False

    def attempt(self) -> bool:
        """Apply the schema (once) and list the tables; True when PostgreSQL is set up."""
        if self.ready.is_set():
            return True
        self.attempts += 1
        try:
            self._reach()
            # it answered: queries need not wait for the breaker's next probe (and the
            # set-up's own failed attempts never fed the breaker, so its wait stays short)
            self._engine.breaker.success()
            self._engine.discover()
        except Unavailable as exc:
            self.last_error = one_line(str(exc))
            return False
        self.last_error = None
        self.ready.set()
        return True

    def _reach(self) -> None:
        """Connect as the schema owner: apply the schema the first time, then just ping."""
        try:
            if self._schema_done:
                with pg.connect(self._uri, autocommit=True) as conn, conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.fetchall()
                return
            oltp.apply_schema(self._uri, self._settings.schemas_dir, self._settings.postgres.reader_uri)
        except (adbc_driver_manager.Error, OSError) as exc:
            message = one_line(str(exc).replace("[libpq] ", ""))
            if _unreachable(exc):
                raise Unavailable(f"PostgreSQL is unavailable: {message}") from None
            # reachable, but the schema owner cannot run the DDL: serve what the database has
            logger.warning("postgres schema not applied", extra={"fields": {"error": message}})
        self._schema_done = True

    def require(self) -> None:
        """Raise Unavailable until PostgreSQL is set up (the sync's gate)."""
        if not self.ready.is_set():
            raise Unavailable(f"PostgreSQL is not set up yet: {self.last_error or 'waiting for it'}")

    def retry_in_background(self, on_ready: Callable[[], None]) -> None:
        """Until an attempt succeeds, retry every interval; then run `on_ready` once."""
        if self.ready.is_set() or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._retry, args=(on_ready,), name="postgres-setup", daemon=True)
        self._thread.start()

    def _retry(self, on_ready: Callable[[], None]) -> None:
        while not self._stop.wait(self._settings.postgres.setup_retry_s):
            if not self.attempt():
                continue
            logger.info("postgres set up after an outage at start-up", extra={"fields": {"attempts": self.attempts}})
            try:
                on_ready()
            except Exception:  # the server keeps serving; the next discovery or sync cycle tries again
                logger.exception("picking postgres up failed")
            return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._settings.postgres.connect_timeout_s + 5)
