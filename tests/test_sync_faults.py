"""The sync under failure: killed mid-backlog and restarted, and PostgreSQL dropping it."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from chrono_flight_client import ChronoFlightClient

from support.processes import ServerProcess
from support.servers import create_database, drop_database
from support.sync import PrivatePostgres, pg_exec
from support.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _status(url: str) -> dict:  # type: ignore[type-arg]
    with ChronoFlightClient.connect(url) as client:
        result = client.action("sync.status")
    assert isinstance(result, dict)
    return result


def test_sync_killed_mid_backlog_resumes_with_nothing_lost_or_doubled(tmp_path: Path) -> None:
    database = create_database()
    uri = f"postgresql://postgres@127.0.0.1:5432/{database}"
    env = {"FLIGHT_POSTGRES__URI": uri, "FLIGHT_SYNC__BATCH_KEYS": "500", "FLIGHT_SYNC__POLL_INTERVAL_S": "0.05"}
    server = ServerProcess(tmp_path, **env)
    try:
        wait_for(lambda: _status(server.url)["state"] == "running", message="waiting for the first sync cycle")
        pg_exec(
            uri,
            "INSERT INTO users (id, email, hashed_password) VALUES (1, 'crash@example.com', 'x')",
            "INSERT INTO audit_logs (user_id, action, details) SELECT 1, 'crash.' || i, jsonb_build_object('i', i) "
            "FROM generate_series(1, 100000) AS s (i)",
        )
        # kill -9 once some of the backlog's batches are in, before the cycle's last one
        wait_for(lambda: _status(server.url)["counters"]["batches"] >= 20, timeout=60, message="waiting for batches")
        server.kill()
        with duckdb.connect(str(tmp_path / "analytics.duckdb")) as con:
            partial = con.sql("SELECT count(*) FROM replica.audit_logs").fetchall()[0][0]
        assert 0 < partial < 100_000  # died with part of the backlog applied

        server = ServerProcess(tmp_path, **env)
        wait_for(
            lambda: (
                _status(server.url)["tables"]["audit_logs"]["changes_behind"] == 0
                and _status(server.url)["tables"]["audit_logs"]["staleness_s"] is not None
            ),
            timeout=120,
            message="waiting for catch-up after the restart",
        )
        with ChronoFlightClient.connect(server.url) as client:
            report = client.action("sync.validate", {"tables": ["audit_logs", "users"], "repair": False})
            counted = client.sql(
                "SELECT count(*) AS n, count(DISTINCT id) AS d FROM audit_logs WHERE action LIKE 'crash.%'",
                max_staleness_s=60,
            )
        assert report["consistent"] is True, report  # (audit_logs also holds the server's own audit rows)
        assert counted.to_pylist() == [{"n": 100_000, "d": 100_000}]
    finally:
        server.stop()
        drop_database(database)


def test_sync_survives_a_postgres_restart(tmp_path: Path) -> None:
    cluster = PrivatePostgres()
    try:
        env = {"FLIGHT_POSTGRES__URI": cluster.uri, "FLIGHT_SYNC__POLL_INTERVAL_S": "0.05",
               "FLIGHT_SYNC__BACKOFF_INITIAL_S": "0.1", "FLIGHT_SYNC__BACKOFF_MAX_S": "1"}  # fmt: skip
        server = ServerProcess(tmp_path / "data", **env)
        try:
            wait_for(lambda: _status(server.url)["state"] == "running", message="waiting for the first sync cycle")
            pg_exec(cluster.uri, "INSERT INTO users (id, email, hashed_password) VALUES (1, 'a@example.com', 'x')")
            cluster.stop()  # a real shutdown: every session ends, new ones are refused
            wait_for(lambda: _status(server.url)["state"] == "paused", message="waiting for the pause")
            paused = _status(server.url)
            assert paused["last_error"] and paused["tables"]["users"]["staleness_s"] is not None
            cluster.start()
            pg_exec(cluster.uri, "INSERT INTO users (id, email, hashed_password) VALUES (2, 'b@example.com', 'x')")
            wait_for(lambda: _status(server.url)["state"] == "running", message="waiting for the resume, by itself")
            with ChronoFlightClient.connect(server.url) as client:
                wait_for(
                    lambda: (
                        client.sql("SELECT count(*) AS n FROM users", max_staleness_s=5).column("n")[0].as_py() == 2
                    ),
                    message="waiting for rows written before and after the restart",
                )
                report = client.action("sync.validate", {"tables": ["users"], "repair": False})
            assert report["consistent"] is True
        finally:
            server.stop()
    finally:
        cluster.remove()
