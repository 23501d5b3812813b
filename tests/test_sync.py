"""Change data capture from PostgreSQL into the DuckDB replicas, against real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from flight_server.settings import CacheSettings, SyncSettings

from support.servers import (
    ServerHandle,
    create_database,
    drop_database,
    pg_settings,
    serve_env,
    start_server,
    stop_server,
)
from support.sync import owner_uri, pg_exec, replica_rows, source_rows, synced
from support.waiting import wait_for

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def synced_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    database = create_database()
    handle = start_server(
        tmp_path_factory.mktemp("sync"),
        rows=2_000,
        cache=CacheSettings(warm_top_n=0),
        postgres=pg_settings(database),
        # the loop copies once at start-up, then waits: each test drives cycles with sync.run
        sync=SyncSettings(poll_interval_s=3600, validate_interval_s=0, batch_keys=2_000, backoff_initial_s=0.2),
    )
    wait_for(
        lambda: handle.app.sync is not None and handle.app.sync.staleness("projects") is not None,
        message="waiting for sync",
    )
    yield handle
    stop_server(handle)
    drop_database(database)


def _same(handle: ServerHandle, table: str, columns: str = "*", where: str = "true") -> None:
    synced(handle)
    ours = sorted(replica_rows(handle, f"SELECT {columns} FROM replica.{table} WHERE {where}"), key=repr)
    theirs = sorted(source_rows(handle, f"SELECT {columns} FROM {table} WHERE {where}"), key=repr)
    assert ours == theirs


def test_sync_initial_copy_matches_every_table(synced_server: ServerHandle) -> None:
    for table in ("projects", "domains", "scrape_pages", "project_pages", "audit_logs"):
        assert replica_rows(synced_server, f"SELECT count(*) FROM replica.{table}") == source_rows(
            synced_server, f"SELECT count(*) FROM {table}"
        )
    _same(synced_server, "domains", "id, project_id, domain")


def test_sync_users_replica_has_no_password_hashes(synced_server: ServerHandle) -> None:
    described = replica_rows(synced_server, "DESCRIBE replica.users")
    columns = [r[0] for r in described]
    assert "email" in columns and "hashed_password" not in columns
    _same(synced_server, "users", "id, email, approval_status")


def test_sync_inserts_updates_and_deletes_propagate(synced_server: ServerHandle) -> None:
    uri = owner_uri(synced_server)
    pg_exec(
        uri,
        "INSERT INTO projects (id, name, owner_id) VALUES ('p-sync-1', 'sync one', 1), ('p-sync-2', 'sync two', 1)",
        "INSERT INTO domains (project_id, domain) VALUES ('p-sync-1', 'sync.example'), ('p-sync-2', 'two.example')",
        "UPDATE projects SET name = 'renamed' WHERE id = 'p-sync-1'",
        "DELETE FROM projects WHERE id = 'p-sync-2'",  # cascades to its domain
        "UPDATE scrape_pages SET status = 'failed' WHERE id IN (SELECT id FROM scrape_pages ORDER BY id LIMIT 25)",
    )
    cycle = synced(synced_server)["cycle"]
    assert cycle["applied"]["projects"] == 2 and cycle["applied"]["scrape_pages"] == 25
    assert replica_rows(synced_server, "SELECT name FROM replica.projects WHERE id LIKE 'p-sync-%'") == [("renamed",)]
    assert replica_rows(synced_server, "SELECT domain FROM replica.domains WHERE project_id LIKE 'p-sync-%'") == [
        ("sync.example",)
    ]
    _same(synced_server, "scrape_pages", "id, status")
    _same(synced_server, "projects", "id, name, owner_id")


def test_sync_primary_key_update_moves_the_row(synced_server: ServerHandle) -> None:
    uri = owner_uri(synced_server)
    pg_exec(uri, "INSERT INTO audit_logs (id, action) VALUES (900001, 'moved.before')")
    synced(synced_server)
    pg_exec(uri, "UPDATE audit_logs SET id = 900002 WHERE id = 900001")
    synced(synced_server)
    assert replica_rows(synced_server, "SELECT id FROM replica.audit_logs WHERE id >= 900001") == [(900002,)]


def test_sync_backlog_of_100000_changes_catches_up(synced_server: ServerHandle) -> None:
    uri = owner_uri(synced_server)
    pg_exec(
        uri,
        "INSERT INTO audit_logs (action, details) SELECT 'bulk.' || i, jsonb_build_object('i', i) "
        "FROM generate_series(1, 60000) AS s (i)",
        "UPDATE audit_logs SET action = action || '.updated' WHERE action LIKE 'bulk.%' AND id % 2 = 0",
        "DELETE FROM audit_logs WHERE action LIKE 'bulk.%' AND id % 5 = 0",
    )
    status = synced_server.action("sync.status")
    assert status["tables"]["audit_logs"]["changes_behind"] >= 100_000
    before = synced_server.app.sync.counters["batches"]  # type: ignore[union-attr]
    cycle = synced(synced_server)["cycle"]
    assert cycle["changes"] >= 100_000
    assert synced_server.app.sync.counters["batches"] - before >= 30  # type: ignore[union-attr]
    after = synced_server.action("sync.status")
    assert after["tables"]["audit_logs"]["changes_behind"] < 10  # the server audits its own requests there
    assert after["lag_s"]["samples"] > 0 and after["lag_s"]["p99"] is not None
    # (the server audits its own requests into audit_logs meanwhile: compare the bulk rows)
    _same(synced_server, "audit_logs", "id, action, details", "action LIKE 'bulk.%'")


def test_sync_truncate_copies_the_table_again(synced_server: ServerHandle) -> None:
    uri = owner_uri(synced_server)
    pg_exec(uri, "INSERT INTO admin_settings (key, value) VALUES ('sync.test', '1')")  # not replicated
    pg_exec(uri, "TRUNCATE project_pages")
    cycle = synced(synced_server)["cycle"]
    assert "project_pages" in cycle["copied"]
    assert replica_rows(synced_server, "SELECT count(*) FROM replica.project_pages") == [(0,)]
    assert not replica_rows(
        synced_server, "SELECT 1 FROM duckdb_tables() WHERE schema_name = 'replica' AND table_name = 'admin_settings'"
    )


def test_sync_added_column_is_replicated_after_a_copy(synced_server: ServerHandle) -> None:
    uri = owner_uri(synced_server)
    pg_exec(uri, "ALTER TABLE domains ADD COLUMN priority INTEGER NOT NULL DEFAULT 3")
    try:
        cycle = synced(synced_server)["cycle"]
        assert "domains" in cycle["copied"]
        assert replica_rows(synced_server, "SELECT DISTINCT priority FROM replica.domains") == [(3,)]
        pg_exec(uri, "UPDATE domains SET priority = 7 WHERE id = 1")
        synced(synced_server)
        assert replica_rows(synced_server, "SELECT priority FROM replica.domains WHERE id = 1") == [(7,)]
    finally:
        pg_exec(uri, "ALTER TABLE domains DROP COLUMN priority")
    cycle = synced(synced_server)["cycle"]
    assert "domains" in cycle["copied"]
    columns = [r[0] for r in replica_rows(synced_server, "DESCRIBE replica.domains")]
    assert "priority" not in columns


def test_sync_validate_finds_and_repairs_drifted_ranges(synced_server: ServerHandle) -> None:
    with synced_server.app.duckdb.cursor() as cur:  # damage the replica behind the sync's back
        cur.execute("DELETE FROM replica.scrape_pages WHERE id IN (SELECT id FROM replica.scrape_pages LIMIT 3)")
        cur.execute("UPDATE replica.domains SET domain = 'tampered' WHERE id = 2")
    report = synced_server.action("sync.validate", {"tables": ["scrape_pages", "domains"], "repair": False})
    assert report["consistent"] is False
    by_table = {t["table"]: t for t in report["tables"]}
    assert by_table["scrape_pages"]["replica_rows"] == by_table["scrape_pages"]["source_rows"] - 3
    assert by_table["domains"]["mismatched_ranges"] and not by_table["domains"]["repaired"]
    repaired = synced_server.action("sync.validate", {"tables": ["scrape_pages", "domains"]})
    assert {t["table"] for t in repaired["tables"] if t["repaired"]} == {"scrape_pages", "domains"}
    again = synced_server.action("sync.validate", {"tables": None, "repair": False})
    assert again["consistent"] is True and len(again["tables"]) == 6
    assert replica_rows(synced_server, "SELECT domain FROM replica.domains WHERE id = 2") != [("tampered",)]


def test_sync_validate_unknown_table_is_invalid_argument(synced_server: ServerHandle) -> None:
    with pytest.raises(pa.ArrowInvalid, match="table 'admin_settings' is not replicated"):  # INVALID_ARGUMENT
        synced_server.action("sync.validate", {"tables": ["admin_settings"]})


def test_sync_refused_rows_go_to_the_retry_queue(synced_server: ServerHandle, monkeypatch: Any) -> None:
    sync = synced_server.app.sync
    assert sync is not None
    store = sync._store
    real_apply = store.apply
    failures = {"left": 2}  # the batch, then projects applied alone

    def refuse_projects(changes: Any, replaced: Any, state: Any) -> None:
        if ("projects" in changes or "projects" in replaced) and failures["left"]:
            failures["left"] -= 1  # a fault DuckDB cannot be made to produce on demand
            raise duckdb.ConversionException("cannot store this row")
        real_apply(changes, replaced, state)

    monkeypatch.setattr(store, "apply", refuse_projects)
    uri = owner_uri(synced_server)
    pg_exec(
        uri,
        "UPDATE projects SET name = name || ' (retry)' WHERE id = (SELECT min(id) FROM projects)",
        "UPDATE domains SET domain = domain WHERE id = 3",
    )
    synced(synced_server)
    status = synced_server.action("sync.status")
    assert [item["table"] for item in status["retry_queue"]] == ["projects"]
    assert status["tables"]["projects"]["staleness_s"] is None  # not used for reads meanwhile
    assert status["tables"]["domains"]["staleness_s"] is not None
    wait_for(lambda: not synced(synced_server)["status"]["retry_queue"], message="waiting for the retry")
    _same(synced_server, "projects", "id, name")


def test_sync_applied_batches_bump_cache_versions(synced_server: ServerHandle) -> None:
    command = {"sql": "SELECT count(*) AS n FROM domains", "max_staleness_s": 60}
    first = synced_server.get(command).column("n")[0].as_py()
    hit = synced_server.get(command).column("n")[0].as_py()
    assert first == hit
    insert = "INSERT INTO domains (project_id, domain) SELECT min(id), 'bump.example' FROM projects"
    pg_exec(owner_uri(synced_server), insert)
    synced(synced_server)
    assert synced_server.get(command).column("n")[0].as_py() == first + 1


def test_sync_state_is_in_health(synced_server: ServerHandle) -> None:
    health = synced_server.action("health")
    assert health["sync"]["state"] == "running"
    assert health["sync"]["staleness_s"] is not None and health["sync"]["changes_behind"] >= 0


def test_sync_resumes_from_its_position_after_restart(tmp_path: Path) -> None:
    database = create_database()
    settings: dict[str, Any] = {
        "cache": CacheSettings(warm_top_n=0),
        "postgres": pg_settings(database),
        "sync": SyncSettings(poll_interval_s=0.1, validate_interval_s=0),
    }
    handle = start_server(tmp_path / "data", rows=1_000, **settings)
    try:
        wait_for(lambda: handle.app.sync is not None and handle.app.sync.staleness("projects") is not None)
        position = synced(handle)["status"]["position"]
        stop_server(handle)
        pg_exec(owner_uri(handle), "INSERT INTO projects (id, name, owner_id) VALUES ('p-offline', 'offline', 1)")
        handle = start_server(tmp_path / "data", rows=1_000, **settings)
        status = synced(handle)["status"]
        assert status["counters"]["table_copies"] == 0  # went on incrementally from its position
        assert status["position"] != position
        assert replica_rows(handle, "SELECT name FROM replica.projects WHERE id = 'p-offline'") == [("offline",)]
    finally:
        stop_server(handle)
        drop_database(database)


def _sync_cli(handle: ServerHandle, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "flight-server"), "sync", *args, "--url", handle.location]
    env = serve_env(handle.data_dir)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_sync_cli_status_run_and_validate(synced_server: ServerHandle) -> None:
    status = _sync_cli(synced_server, "status", "--format", "json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["tables"]["projects"]["replicated"] is True
    run = _sync_cli(synced_server, "run")
    assert run.returncode == 0 and "applied" in run.stdout and "scrape_pages" in run.stdout
    with synced_server.app.duckdb.cursor() as cur:
        cur.execute("UPDATE replica.projects SET name = 'drift' WHERE id = (SELECT min(id) FROM replica.projects)")
    found = _sync_cli(synced_server, "validate", "--table", "projects", "--no-repair")
    assert found.returncode == 1 and "differences found" in found.stdout
    fixed = _sync_cli(synced_server, "validate", "--table", "projects", "--format", "json")
    assert fixed.returncode == 0 and json.loads(fixed.stdout)["tables"][0]["repaired"] is True
    assert _sync_cli(synced_server, "validate", "--table", "projects").stdout.startswith("consistent")


def test_sync_cli_without_sync_says_why(server: ServerHandle) -> None:
    out = _sync_cli(server, "status")
    assert out.returncode == 2
    assert "sync is off" in out.stderr and "FLIGHT_POSTGRES__URI" in out.stderr and "Traceback" not in out.stderr


def test_sync_pointed_at_another_database_copies_everything_again(tmp_path: Path) -> None:
    first, second = create_database(), create_database()
    sync = SyncSettings(poll_interval_s=3600, validate_interval_s=0)
    handle = start_server(tmp_path / "data", rows=1_000, postgres=pg_settings(first), sync=sync)
    try:
        wait_for(lambda: handle.app.sync is not None and handle.app.sync.staleness("projects") is not None)
        assert replica_rows(handle, "SELECT count(*) FROM replica.projects") == [(12,)]
        stop_server(handle)
        handle = start_server(tmp_path / "data", postgres=pg_settings(second), sync=sync)
        pg_exec(owner_uri(handle), "INSERT INTO users (id, email, hashed_password) VALUES (1, 'new@example.com', 'x')",
                "INSERT INTO projects (id, name, owner_id) VALUES ('only-one', 'only', 1)")  # fmt: skip
        status = synced(handle)["status"]
        assert status["counters"]["table_copies"] == 6  # its position meant nothing here
        assert replica_rows(handle, "SELECT id FROM replica.projects") == [("only-one",)]
    finally:
        stop_server(handle)
        drop_database(first)
        drop_database(second)


def test_sync_capture_can_be_removed_by_an_administrator(synced_server: ServerHandle) -> None:
    uri = owner_uri(synced_server)
    pg_exec(uri, "CREATE TABLE untracked_probe (id BIGINT PRIMARY KEY)", "SELECT chrono_sync.track('untracked_probe')")
    try:
        pg_exec(uri, "INSERT INTO untracked_probe VALUES (1)")
        assert pg_exec(uri, "SELECT count(*) FROM chrono_sync.changes WHERE table_name = 'untracked_probe'") == [(1,)]
        pg_exec(uri, "SELECT chrono_sync.untrack('untracked_probe')", "INSERT INTO untracked_probe VALUES (2)")
        assert pg_exec(uri, "SELECT count(*) FROM chrono_sync.changes WHERE table_name = 'untracked_probe'") == [(0,)]
    finally:
        pg_exec(uri, "DROP TABLE untracked_probe")
