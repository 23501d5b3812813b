"""The DuckDB side of the sync: replica tables in schema `replica`, and the sync state.

Every write here is one DuckDB transaction: a batch of changed rows (delete the keys,
insert their current rows), a whole-table copy, or a repair. The position the sync has
applied up to is written in the same transaction as the rows it stands for, so a crash
at any point leaves rows and position agreeing; applying a batch again is harmless
because it replaces rows by primary key.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import duckdb
import pyarrow as pa

SCHEMA = "replica"
STATE_TABLE = f"{SCHEMA}._sync_state"


def _key_array(keys: Iterable[str], key_type: str) -> pa.Array:
    values = sorted(keys)
    if key_type in ("bigint", "integer", "smallint"):
        return pa.array([int(k) for k in values], pa.int64())
    return pa.array(values, pa.string())


class ReplicaStore:
    """Replica tables and the persisted sync state in the server's DuckDB database."""

    def __init__(self, cursor: Callable[[], duckdb.DuckDBPyConnection]) -> None:
        self._cursor = cursor
        with self._cursor() as cur:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            cur.execute(f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")

    # -- state -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self._cursor() as cur:
            rows = cur.execute(f"SELECT key, value FROM {STATE_TABLE}").fetchall()
        return {str(k): json.loads(v) for k, v in rows}

    def consumer(self) -> str:
        """This database's name as a change consumer, made once and kept."""
        name = self.state().get("consumer")
        if isinstance(name, str):
            return name
        name = f"duckdb-{uuid.uuid4().hex[:16]}"
        with self._cursor() as cur:
            self._put(cur, {"consumer": name})
        return name

    @staticmethod
    def _put(cur: duckdb.DuckDBPyConnection, values: dict[str, Any]) -> None:
        for key, value in values.items():
            cur.execute(
                f"INSERT OR REPLACE INTO {STATE_TABLE} VALUES ($1, $2)",
                [key, json.dumps(value)],
            )

    # -- writes ------------------------------------------------------------------------

    def apply(
        self,
        changes: Mapping[str, tuple[Iterable[str], str, pa.Table]],
        replaced: Mapping[str, pa.Table],
        state: dict[str, Any],
    ) -> None:
        """One transaction: replace whole tables, replace rows by key, record the state.

        `changes` maps a table to (keys that changed, key type, their current rows);
        keys without a row were deleted.
        """
        with self._cursor() as cur:
            cur.execute("BEGIN TRANSACTION")
            try:
                for table, rows in replaced.items():
                    cur.register("_incoming", rows)
                    cur.execute(f'CREATE OR REPLACE TABLE {SCHEMA}."{table}" AS SELECT * FROM _incoming')
                    cur.unregister("_incoming")
                for table, (keys, key_type, rows) in changes.items():
                    self._replace_rows(cur, table, pa.table({"k": _key_array(keys, key_type)}), rows)
                self._put(cur, state)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    @staticmethod
    def _replace_rows(cur: duckdb.DuckDBPyConnection, table: str, keys: pa.Table, rows: pa.Table) -> None:
        cur.register("_keys", keys)
        cur.register("_incoming", rows)
        cur.execute(f'DELETE FROM {SCHEMA}."{table}" WHERE id IN (SELECT k FROM _keys)')
        cur.execute(f'INSERT INTO {SCHEMA}."{table}" BY NAME SELECT * FROM _incoming')
        cur.unregister("_keys")
        cur.unregister("_incoming")

    def repair(self, table: str, where: str, rows: pa.Table) -> None:
        """Replace the rows of a key range (`where` over column id) with `rows`, atomically."""
        with self._cursor() as cur:
            cur.execute("BEGIN TRANSACTION")
            try:
                cur.register("_incoming", rows)
                cur.execute(f'DELETE FROM {SCHEMA}."{table}" WHERE {where}')
                cur.execute(f'INSERT INTO {SCHEMA}."{table}" BY NAME SELECT * FROM _incoming WHERE {where}')
                cur.unregister("_incoming")
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    # -- reads -------------------------------------------------------------------------

    def tables(self) -> dict[str, list[str]]:
        """Replica tables and their columns."""
        with self._cursor() as cur:
            rows = cur.execute(
                "SELECT table_name, list(column_name ORDER BY column_index) FROM duckdb_columns() "
                "WHERE schema_name = $1 AND NOT starts_with(table_name, '_') GROUP BY table_name",
                [SCHEMA],
            ).fetchall()
        return {str(t): [str(c) for c in cols] for t, cols in rows}

    def query(self, sql: str, relations: dict[str, pa.Table] | None = None) -> list[tuple[Any, ...]]:
        with self._cursor() as cur:
            for name, table in (relations or {}).items():
                cur.register(name, table)
            return cur.execute(sql).fetchall()
