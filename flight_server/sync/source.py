"""The PostgreSQL side of the sync: change capture set-up, snapshots, deltas and rows.

All reads of one sync cycle happen in one REPEATABLE READ transaction (`Snapshot`), so
that the rows copied for every changed key, and the position recorded with them, are
one consistent state of the database. Rows come over ADBC as Arrow; JSON and other
types DuckDB cannot take as they are arrive as text.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import adbc_driver_postgresql.dbapi as pg
import pyarrow as pa

from flight_server.engines.postgres import with_connect_timeout
from flight_server.security.access import load_access

logger = logging.getLogger(__name__)

_AS_TEXT = {"json", "jsonb", "xml", "uuid", "inet", "cidr", "macaddr", "interval", "money", "tsvector", "xid8"}
_KEY_TYPES = {"bigint": "bigint", "integer": "integer", "smallint": "smallint", "text": "text"}


@dataclass(frozen=True)
class Change:
    """What one delta says about a table: keys to re-read, or the whole table."""

    keys: frozenset[str]
    truncated: bool
    count: int


@dataclass(frozen=True)
class TableShape:
    name: str
    columns: tuple[tuple[str, str], ...]  # (column, PostgreSQL data type), hidden ones left out
    key_type: str

    @property
    def select_list(self) -> str:
        parts = []
        for column, kind in self.columns:
            quoted = f'"{column}"'
            parts.append(f"{quoted}::text AS {quoted}" if kind in _AS_TEXT or kind == "USER-DEFINED" else quoted)
        return ", ".join(parts)


def _plain(table: pa.Table) -> pa.Table:
    """The table without the driver's field metadata (types named by PostgreSQL)."""
    return table.replace_schema_metadata(None).cast(
        pa.schema([pa.field(f.name, f.type, f.nullable) for f in table.schema])
    )


class Snapshot:
    """One REPEATABLE READ transaction: a consistent view of PostgreSQL."""

    def __init__(self, cursor: pg.Cursor, secret: Mapping[str, frozenset[str]]) -> None:
        self._cur = cursor
        self._secret = secret  # columns never copied out of PostgreSQL (flight_server.security.access)
        cursor.execute("SELECT pg_current_snapshot()::text, extract(epoch FROM clock_timestamp())")
        text, taken = cursor.fetchone()
        self.text = str(text)
        self.taken_at = float(taken)

    def delta(self, since: str | None, tables: Iterable[str]) -> tuple[dict[str, Change], int]:
        """Changes committed after snapshot `since` and visible now, by table; and their count."""
        names = sorted(tables)
        if since is None:
            return {}, 0
        self._cur.execute(
            "SELECT table_name, bool_or(op = 'T'), array_agg(DISTINCT row_key) FILTER (WHERE row_key IS NOT NULL), "
            "count(*) FROM chrono_sync.changes "
            "WHERE xid >= pg_snapshot_xmin($1::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::pg_snapshot) "
            "AND table_name = ANY($2) GROUP BY table_name",
            (since, names),
        )
        out: dict[str, Change] = {}
        total = 0
        for table, truncated, keys, count in self._cur.fetchall():
            out[str(table)] = Change(frozenset(keys or ()), bool(truncated), int(count))
            total += int(count)
        return out, total

    def pending(self, since: str, tables: Iterable[str]) -> dict[str, int]:
        """Per table: changes not applied yet."""
        self._cur.execute(
            "SELECT table_name, count(*) FROM chrono_sync.changes "
            "WHERE xid >= pg_snapshot_xmin($1::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::pg_snapshot) "
            "AND table_name = ANY($2) GROUP BY table_name",
            (since, sorted(tables)),
        )
        return {str(t): int(n) for t, n in self._cur.fetchall()}

    def change_times(self, since: str, tables: Iterable[str], most: int = 2000) -> list[float]:
        """Write times (epoch seconds) of up to `most` changes of the delta, evenly sampled."""
        self._cur.execute(
            "SELECT extract(epoch FROM at) FROM "
            "(SELECT at, row_number() OVER (ORDER BY id) AS n, count(*) OVER () AS c FROM chrono_sync.changes "
            "WHERE xid >= pg_snapshot_xmin($1::pg_snapshot) "
            "AND NOT pg_visible_in_snapshot(xid, $1::pg_snapshot) AND table_name = ANY($2)) s "
            "WHERE n % greatest(1, c / $3) = 0",
            (since, sorted(tables), most),
        )
        return [float(r[0]) for r in self._cur.fetchall()]

    def shapes(self, tables: Iterable[str]) -> dict[str, TableShape]:
        names = sorted(tables)
        self._cur.execute(
            "SELECT c.table_name, c.column_name, c.data_type, "
            "(SELECT k.data_type FROM information_schema.columns k WHERE k.table_schema = 'public' "
            " AND k.table_name = c.table_name AND k.column_name = 'id') "
            "FROM information_schema.columns c WHERE c.table_schema = 'public' AND c.table_name = ANY($1) "
            "ORDER BY c.table_name, c.ordinal_position",
            (names,),
        )
        columns: dict[str, list[tuple[str, str]]] = {}
        keys: dict[str, str] = {}
        for table, column, kind, key_type in self._cur.fetchall():
            if column in self._secret.get(table, frozenset()):
                continue
            columns.setdefault(str(table), []).append((str(column), str(kind)))
            keys[str(table)] = _KEY_TYPES.get(str(key_type), "text")
        return {t: TableShape(t, tuple(cols), keys[t]) for t, cols in columns.items()}

    def rows(self, shape: TableShape, keys: Iterable[str] | None = None) -> pa.Table:
        """Current rows of a table: all of them, or those with these primary keys."""
        sql = f'SELECT {shape.select_list} FROM "{shape.name}"'
        if keys is None:
            self._cur.execute(sql)
        else:
            self._cur.execute(f"{sql} WHERE id = ANY($1::{shape.key_type}[])", (sorted(keys),))
        return _plain(self._cur.fetch_arrow_table())


class ChangeSource:
    """Connections to PostgreSQL as the schema owner, for the sync only."""

    def __init__(self, uri: str, schemas_dir: Path, connect_timeout_s: float) -> None:
        self._uri = with_connect_timeout(uri, connect_timeout_s)
        self._schemas_dir = schemas_dir
        self._secret = load_access(schemas_dir / "postgres.sql").secret
        self._idle: list[pg.Connection] = []  # opening a connection costs tens of milliseconds: keep a few
        self._lock = threading.Lock()

    @contextmanager
    def _session(self) -> Iterator[pg.Cursor]:
        """A cursor on a pooled connection; a connection that failed is closed, not reused."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = pg.connect(self._uri, autocommit=True)
        try:
            with conn.cursor() as cur:
                yield cur
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        with self._lock:
            if len(self._idle) < 2:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    def install(self, tables: Iterable[str]) -> list[str]:
        """Create the change table and triggers; the tables that exist and are tracked."""
        with self._session() as cur:
            cur.executescript((self._schemas_dir / "postgres_sync.sql").read_text())
            cur.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                "AND table_type = 'BASE TABLE' AND table_name = ANY($1)",
                (sorted(tables),),
            )
            present = sorted(str(r[0]) for r in cur.fetchall())
            for table in present:
                cur.execute("SELECT chrono_sync.track($1)", (table,))
        return present

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        with self._session() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield Snapshot(cur, self._secret)
            finally:
                cur.execute("ROLLBACK")

    def advance(self, consumer: str, snapshot: str, retention_s: float) -> int:
        """Record how far a consumer got; drop changes no live consumer still needs."""
        with self._session() as cur:
            cur.execute(
                "INSERT INTO chrono_sync.consumers (name, horizon) VALUES ($1, pg_snapshot_xmin($2::pg_snapshot)) "
                "ON CONFLICT (name) DO UPDATE SET horizon = excluded.horizon, updated_at = now()",
                (consumer, snapshot),
            )
            cur.execute(
                "DELETE FROM chrono_sync.changes WHERE xid < (SELECT min(horizon) FROM chrono_sync.consumers "
                "WHERE updated_at > now() - make_interval(secs => $1))",
                (retention_s,),
            )
            return int(cur.rowcount or 0)

    def register(self, consumer: str) -> None:
        """Hold back the clean-up of changes for a new consumer before it copies anything."""
        with self._session() as cur:
            cur.execute(
                "INSERT INTO chrono_sync.consumers (name, horizon) "
                "VALUES ($1, pg_snapshot_xmin(pg_current_snapshot())) ON CONFLICT (name) DO NOTHING",
                (consumer,),
            )

    def position_lost(self, consumer: str, retention_s: float) -> bool:
        """True when this database cannot replay changes for the consumer's position.

        Either the consumer was away longer than the retention (changes it needs may be
        gone), or this database has never seen it: another or a recreated database,
        whose transaction ids say nothing about the position.
        """
        with self._session() as cur:
            cur.execute(
                "SELECT updated_at < now() - make_interval(secs => $2) FROM chrono_sync.consumers WHERE name = $1",
                (consumer, retention_s),
            )
            row = cur.fetchone()
        return row is None or bool(row[0])
