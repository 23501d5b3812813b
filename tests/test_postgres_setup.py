"""PostgreSQL unreachable at start-up: the server starts, serves DuckDB and the replicas, and takes PostgreSQL up later.

Every outage here is a cut TCP proxy in front of the shared cluster (never the cluster itself).
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pyarrow.flight as flight
import pytest

from flight_server.app import App
from flight_server.settings import CacheSettings, DuckDBSettings, Settings, SyncSettings, packaged_schemas
from flight_server.startup import StartupError

from support.proxies import TcpProxy
from support.servers import ServerHandle, create_database, drop_database, pg_settings, start_server, stop_server
from support.sync import get_with_metadata, pg_exec
from support.waiting import wait_for

pytestmark = pytest.mark.postgres

ANALYTICAL = {"sql": "SELECT status, count(*) AS n FROM scrape_pages GROUP BY status ORDER BY status"}
ON_POSTGRES = {"sql": "SELECT name FROM projects WHERE id = $1", "params": ["proj-001"], "engine": "postgres"}
SYNC = SyncSettings(poll_interval_s=0.05, validate_interval_s=0, backoff_initial_s=0.1, backoff_max_s=0.5)


def _start(data_dir: Path, database: str, proxy: TcpProxy, rows: int = 0) -> ServerHandle:
    return start_server(
        data_dir,
        rows=rows,
        cache=CacheSettings(warm_top_n=0, l1_max_entries=0),
        postgres=pg_settings(database, port=proxy.port, setup_retry_s=0.1, breaker_open_s=0.2),
        sync=SYNC,
    )


def _postgres_answers(handle: ServerHandle) -> bool:
    try:
        return handle.get(ON_POSTGRES).to_pylist() == [{"name": "Newsroom Archive"}]
    except flight.FlightUnavailableError:
        return False


def test_postgres_setup_unreachable_at_start_serves_replicas_then_takes_postgres_up(tmp_path: Path) -> None:
    database = create_database()
    proxy = TcpProxy(5432)
    direct = pg_settings(database).uri
    assert direct is not None
    try:
        first = _start(tmp_path, database, proxy, rows=1_000)  # an earlier run leaves replicas on disk
        wait_for(lambda: first.app.sync is not None and first.app.sync.staleness("scrape_pages") is not None)
        expected = first.get(ANALYTICAL)
        stop_server(first)

        proxy.cut()
        handle = _start(tmp_path, database, proxy)  # used to die: unknown table 'projects'; no engine has it
        try:
            health = handle.action("health")
            assert health["status"] == "degraded" and health["engines"]["postgres"]["status"] == "down"
            assert health["breakers"]["postgres"]["state"] != "closed"
            with pytest.raises(flight.FlightUnavailableError, match=r"(?i)postgres\S* is unavailable"):
                handle.get(ON_POSTGRES)  # fails fast: the breaker opened when the set-up failed
            assert handle.get({"query": "domains.top", "params": {"limit": 3}}).num_rows == 3  # DuckDB serves
            table, meta = get_with_metadata(handle, ANALYTICAL)  # the replicas of the earlier run answer
            assert meta["replica"] is True and "PostgreSQL unavailable" in meta["reason"]
            assert table.to_pylist() == expected.to_pylist()

            # while it is away: a row changes and a table appears, both to be picked up
            pg_exec(
                direct,
                "UPDATE scrape_pages SET status = 'failed' WHERE id = (SELECT min(id) FROM scrape_pages)",
                "CREATE TABLE field_notes (id BIGINT PRIMARY KEY, project_id TEXT, note TEXT)",
                "INSERT INTO field_notes VALUES (1, 'proj-001', 'arrived while the server could not see it')",
            )
            fresh = pg_exec(direct, "SELECT status, count(*) AS n FROM scrape_pages GROUP BY status ORDER BY status")
            proxy.restore()
            wait_for(lambda: _postgres_answers(handle), message="waiting for PostgreSQL routes answering again")
            wait_for(
                lambda: handle.action("sync.status")["state"] == "running", message="waiting for the sync resuming"
            )
            notes = handle.get({"sql": "SELECT note FROM field_notes", "engine": "postgres"})
            assert notes.num_rows == 1
            wait_for(
                lambda: (
                    [tuple(r.values()) for r in handle.get({**ANALYTICAL, "engine": "duckdb"}).to_pylist()]
                    == [tuple(r) for r in fresh]
                ),
                message="waiting for the replica catching up with the change made during the outage",
            )
            assert handle.action("health")["engines"]["postgres"]["status"] == "ok"
        finally:
            stop_server(handle)
    finally:
        proxy.cut()
        drop_database(database)


def test_postgres_setup_applies_the_schema_when_postgres_first_answers(tmp_path: Path) -> None:
    database = create_database()  # empty: nothing of the schema yet
    proxy = TcpProxy(5432)
    proxy.cut()
    try:
        handle = _start(tmp_path, database, proxy)
        try:
            assert handle.action("sync.status")["state"] in ("starting", "paused")
            proxy.restore()
            wait_for(
                lambda: handle.action("sync.status")["state"] == "running", message="waiting for set-up, then the sync"
            )
            wait_for(lambda: handle.app.sync is not None and handle.app.sync.staleness("projects") is not None)
            owner = pg_settings(database).uri or ""
            assert pg_exec(owner, "SELECT count(*) FROM pg_tables WHERE tablename = 'projects'") == [
                (1,)
            ]  # the server applied schemas/postgres.sql when PostgreSQL arrived
            counted = handle.get({"sql": "SELECT count(*) AS n FROM projects", "engine": "postgres"})
            assert counted.column("n")[0].as_py() == 0
        finally:
            stop_server(handle)
    finally:
        proxy.cut()
        drop_database(database)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_postgres_setup_catalogue_is_checked_against_the_declared_schema_while_down(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(packaged_schemas(), schemas)
    catalog = schemas / "catalog.toml"
    text = catalog.read_text()
    assert "SELECT a.user_id, a.action, a.timestamp" in text
    catalog.write_text(text.replace("SELECT a.user_id, a.action, a.timestamp", "SELECT a.user_id, a.no_such_column"))
    settings = Settings(
        data_dir=tmp_path / "data",
        schemas_dir=schemas,
        duckdb=DuckDBSettings(threads=2, memory_limit="1GB"),
        postgres=pg_settings("chrono_absent", port=_closed_port()),
        cache=CacheSettings(warm_top_n=0),
    )
    with pytest.raises(StartupError, match=r"system\.user_activity does not plan: .*no_such_column.*; fix it"):
        App(settings)
    App(settings.model_copy(update={"schemas_dir": packaged_schemas()})).close()  # the shipped one passes
