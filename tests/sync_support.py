"""Helpers shared by the sync and replica tests: PostgreSQL writes and replica reads."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import adbc_driver_postgresql.dbapi as pg
import pyarrow as pa
import pyarrow.flight as flight

from conftest import ServerHandle


def pg_exec(uri: str, *statements: str) -> list[tuple[Any, ...]]:
    """Run statements in one autocommit session; the last one's rows (if any)."""
    rows: list[tuple[Any, ...]] = []
    with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)
            rows = cur.fetchall() if cur.description else []
    return rows


def owner_uri(handle: ServerHandle) -> str:
    uri = handle.app.settings.postgres.uri
    assert uri is not None
    return uri


def replica_rows(handle: ServerHandle, sql: str) -> list[tuple[Any, ...]]:
    """Rows read straight from the server's DuckDB (replica tables are `replica.<name>`)."""
    with handle.app.duckdb.cursor() as cur:
        return cur.execute(sql).fetchall()


def source_rows(handle: ServerHandle, sql: str) -> list[tuple[Any, ...]]:
    return pg_exec(owner_uri(handle), sql)


def get_with_metadata(handle: ServerHandle, command: dict[str, Any]) -> tuple[pa.Table, dict[str, Any]]:
    reader = handle.client.do_get(flight.Ticket(json.dumps(command).encode()))
    first = reader.read_chunk()
    metadata = json.loads(first.app_metadata.to_pybytes())
    return pa.Table.from_batches([first.data, *reader.read_all().to_batches()]), metadata


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def synced(handle: ServerHandle) -> dict[str, Any]:
    """Run one sync cycle through the action; the status after it."""
    result = handle.action("sync.run")
    assert isinstance(result, dict)
    return result
