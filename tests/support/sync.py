"""Helpers shared by the sync and replica tests: PostgreSQL writes and replica reads."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi as pg
import pyarrow as pa
import pyarrow.flight as flight

from support.servers import ServerHandle


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


def synced(handle: ServerHandle) -> dict[str, Any]:
    """Run one sync cycle through the action; the status after it."""
    result = handle.action("sync.run")
    assert isinstance(result, dict)
    return result


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, so that it can really be stopped and restarted.

    The shared cluster serves the rest of the suite; this one lives in a temporary
    directory on a free port. PostgreSQL refuses to run as root, so as root it runs as
    the `postgres` system user (hence a directory of its own, not pytest's private one).
    """

    def __init__(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="chrono-pg-"))
        self.dir = root / "pg"
        self.port = _free_port()
        self.bin = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip())
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(root, "postgres")
        self._run("initdb", "-D", str(self.dir), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.start()

    @property
    def uri(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as, str(self.bin / tool), *args], check=True, capture_output=True, timeout=60)

    def _ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.dir.parent} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.dir), "-m", "fast", "-w", "-o", options, "-l", str(self.dir / "log"), action)

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("stop")

    def remove(self) -> None:
        """Stop the cluster if it runs, and delete it."""
        subprocess.run([*self._as, str(self.bin / "pg_ctl"), "-D", str(self.dir), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.dir.parent, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
