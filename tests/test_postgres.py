"""PostgreSQL over ADBC and the hybrid router, against a real PostgreSQL database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi as pg
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_server.errors import InvalidArgument, PermissionDenied
from flight_server.settings import CacheSettings, SyncSettings

from support.proxies import TcpProxy
from support.servers import ServerHandle, create_database, drop_database, pg_settings, start_server, stop_server
from support.waiting import wait_for

pytestmark = pytest.mark.postgres

# PostgreSQL and hybrid routes are what these servers test: no replicas to answer instead
NO_SYNC = SyncSettings(enabled=False)


def _with_metadata(handle: ServerHandle, command: dict[str, Any]) -> tuple[pa.Table, dict[str, Any]]:
    reader = handle.client.do_get(flight.Ticket(json.dumps(command).encode()))
    first = reader.read_chunk()
    metadata = json.loads(first.app_metadata.to_pybytes())
    return pa.Table.from_batches([first.data, *reader.read_all().to_batches()]), metadata


def _pg(handle: ServerHandle, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    uri = handle.app.settings.postgres.uri
    assert uri is not None
    with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql, params or None)
        return list(cur.fetchall())


# -- routing -------------------------------------------------------------------------------


def test_postgres_oltp_table_routes_to_postgres(hybrid_server: ServerHandle) -> None:
    table, meta = _with_metadata(hybrid_server, {"sql": "SELECT count(*) AS n FROM scrape_pages"})
    assert meta["engine"] == "postgres"
    assert "scrape_pages" in meta["reason"]
    assert table.column("n")[0].as_py() == _pg(hybrid_server, "SELECT count(*) FROM scrape_pages")[0][0] > 0


def test_postgres_lookup_by_key_with_bound_parameter(hybrid_server: ServerHandle) -> None:
    table, meta = _with_metadata(
        hybrid_server, {"sql": "SELECT name FROM projects WHERE id = $1", "params": ["proj-003"]}
    )
    assert meta["engine"] == "postgres"
    assert table.column("name").to_pylist() == [
        _pg(hybrid_server, "SELECT name FROM projects WHERE id = 'proj-003'")[0][0]
    ]


def test_postgres_hybrid_join_matches_an_independent_join(hybrid_server: ServerHandle) -> None:
    sql = (
        "SELECT p.name, count(*) AS captures FROM cdx_records c JOIN projects p ON p.id = c.project_id "
        "WHERE c.status_code = 200 GROUP BY p.name ORDER BY p.name"
    )
    table, meta = _with_metadata(hybrid_server, {"sql": sql})
    assert meta["engine"] == "hybrid"
    cdx = hybrid_server.get({"sql": "SELECT project_id, status_code FROM cdx_records"}).to_pandas()
    projects = pd.DataFrame(_pg(hybrid_server, "SELECT id, name FROM projects"), columns=["id", "name"])
    joined = cdx[cdx.status_code == 200].merge(projects, left_on="project_id", right_on="id")
    expected = joined.groupby("name").size().sort_index()
    assert dict(zip(table.column("name").to_pylist(), table.column("captures").to_pylist(), strict=True)) == {
        k: int(v) for k, v in expected.items()
    }


def test_postgres_hybrid_pushes_filters_and_prunes_columns(hybrid_server: ServerHandle) -> None:
    sql = (
        "SELECT sp.status, count(*) AS n FROM scrape_pages sp JOIN cdx_records c ON c.id = 'cdx-' || sp.id "
        "WHERE sp.project_id = $1 AND sp.status <> 'skipped' GROUP BY 1 ORDER BY 1"
    )
    explained = hybrid_server.action("explain", {"sql": sql, "params": ["proj-002"]})
    assert explained["engine"] == "hybrid"
    [fetch] = explained["postgres_fetches"]
    assert fetch["table"] == "scrape_pages"
    assert sorted(fetch["columns"]) == ["id", "project_id", "status"]
    assert any("project_id" in f and "$1" in f for f in fetch["pushed_filters"])
    assert fetch["params"][0] == "proj-002"
    assert "WHERE" in fetch["sql"]
    table = hybrid_server.get({"sql": sql, "params": ["proj-002"]})
    direct = _pg(
        hybrid_server,
        "SELECT status, count(*) FROM scrape_pages WHERE project_id = 'proj-002' AND status <> 'skipped' "
        "GROUP BY 1 ORDER BY 1",
    )
    assert [(r["status"], r["n"]) for r in table.to_pylist()] == [(s, n) for s, n in direct]


def test_postgres_outer_join_filter_is_not_pushed_to_the_null_side(hybrid_server: ServerHandle) -> None:
    sql = (
        "SELECT c.project_id, p.name FROM cdx_records c LEFT JOIN projects p ON p.id = c.project_id "
        "WHERE p.name IS NULL"
    )
    explained = hybrid_server.action("explain", {"sql": sql})
    assert explained["postgres_fetches"][0]["pushed_filters"] == []
    assert hybrid_server.get({"sql": sql}).num_rows == 0  # every capture's project exists


def test_postgres_engine_hint_and_unknown_table(hybrid_server: ServerHandle) -> None:
    with pytest.raises(pa.ArrowInvalid, match="not in postgres"):
        hybrid_server.get({"sql": "SELECT count(*) FROM cdx_records", "engine": "postgres"})
    with pytest.raises(pa.ArrowInvalid, match="nope"):
        hybrid_server.get({"sql": "SELECT * FROM nope"})


@pytest.mark.parametrize("value", ["proj-001' OR '1'='1", "x'); DROP TABLE projects; --"])
def test_postgres_injection_in_parameters_is_data(hybrid_server: ServerHandle, value: str) -> None:
    assert hybrid_server.get({"sql": "SELECT * FROM projects WHERE id = $1", "params": [value]}).num_rows == 0
    assert _pg(hybrid_server, "SELECT count(*) FROM projects")[0][0] == 12


# -- named queries -------------------------------------------------------------------------


def test_postgres_projects_performance_matches_both_sources(hybrid_server: ServerHandle) -> None:
    table, meta = _with_metadata(hybrid_server, {"query": "projects.performance", "params": {"project_id": "proj-001"}})
    assert meta["engine"] == "hybrid"
    [row] = table.to_pylist()
    statuses = dict(
        _pg(hybrid_server, "SELECT status, count(*) FROM scrape_pages WHERE project_id = 'proj-001' GROUP BY 1")
    )
    owner = _pg(
        hybrid_server, "SELECT u.email FROM projects p JOIN users u ON u.id = p.owner_id WHERE p.id = 'proj-001'"
    )
    cdx = hybrid_server.get(
        {"sql": "SELECT count(*) AS n, count(DISTINCT domain) AS d FROM cdx_records WHERE project_id = 'proj-001'"}
    ).to_pylist()[0]
    assert row["owner_email"] == owner[0][0]
    assert row["pages_total"] == sum(statuses.values())
    assert row["pages_completed"] == statuses.get("completed", 0)
    assert row["pages_failed"] == statuses.get("failed", 0)
    assert row["pages_pending"] == statuses.get("pending", 0) + statuses.get("in_progress", 0)
    assert row["completion_rate"] == pytest.approx(statuses.get("completed", 0) / sum(statuses.values()))
    assert (row["captures"], row["domains"]) == (cdx["n"], cdx["d"])


def test_postgres_system_user_activity_matches_audit_log(hybrid_server: ServerHandle) -> None:
    table, meta = _with_metadata(hybrid_server, {"query": "system.user_activity", "params": {"days": 7}})
    assert meta["engine"] == "postgres"
    expected = dict(
        _pg(
            hybrid_server,
            "SELECT u.email, count(a.id) FROM users u LEFT JOIN audit_logs a ON a.user_id = u.id "
            "AND a.timestamp > (SELECT max(timestamp) FROM audit_logs) - interval '7 days' GROUP BY u.email",
        )
    )
    assert {r["email"]: r["events"] for r in table.to_pylist()} == expected


def test_postgres_efficiency_trends_add_up(hybrid_server: ServerHandle) -> None:
    table = hybrid_server.run(
        {
            "query": "projects.efficiency_trends",
            "params": {"project_id": "proj-001", "interval": "year", "periods": 1000},
        }
    )
    total = _pg(hybrid_server, "SELECT count(*) FROM scrape_pages WHERE project_id = 'proj-001'")[0][0]
    assert sum(table.column("pages").to_pylist()) == total
    assert table.column("period_start").to_pylist() == sorted(table.column("period_start").to_pylist())


POSTGRES_SAMPLES: dict[str, dict[str, Any]] = {
    "projects.performance": {"project_id": "proj-004"},
    "projects.efficiency_trends": {},
    "system.user_activity": {},
}


def test_postgres_samples_cover_every_named_query_needing_postgres(hybrid_server: ServerHandle) -> None:
    assert sorted(POSTGRES_SAMPLES) == sorted(q.name for q in hybrid_server.app.catalog if q.engine != "duckdb")


@pytest.mark.parametrize("query", sorted(POSTGRES_SAMPLES))
def test_postgres_named_query_schema_is_stable_and_rows_present(hybrid_server: ServerHandle, query: str) -> None:
    command = {"query": query, "params": POSTGRES_SAMPLES[query]}
    info = hybrid_server.client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(command).encode()))
    table = hybrid_server.client.do_get(info.endpoints[0].ticket).read_all()
    assert table.num_rows > 0
    assert table.schema.remove_metadata() == info.schema.remove_metadata()


def test_postgres_named_queries_unavailable_without_postgres(server: ServerHandle) -> None:
    with pytest.raises(flight.FlightUnavailableError, match="FLIGHT_POSTGRES__URI"):
        server.get({"query": "projects.performance", "params": {"project_id": "proj-001"}})
    assert server.get({"sql": "SELECT 1 AS one"}).num_rows == 1


# -- read-only, twice over -----------------------------------------------------------------


def test_postgres_write_is_rejected_before_it_is_sent(hybrid_server: ServerHandle) -> None:
    with pytest.raises(pa.ArrowInvalid, match="read-only"):
        hybrid_server.get({"sql": "INSERT INTO admin_settings (key, value) VALUES ('x', '1')"})
    assert _pg(hybrid_server, "SELECT count(*) FROM admin_settings WHERE key = 'x'")[0][0] == 0


def test_postgres_reader_role_refuses_writes_even_past_the_guard(hybrid_server: ServerHandle) -> None:
    engine = hybrid_server.app.postgres
    assert engine is not None
    with pytest.raises((InvalidArgument, PermissionDenied), match=r"read-only|permission denied"):
        engine.execute("INSERT INTO admin_settings (key, value) VALUES ('y', '1')", None, query_id="t1")
    database = hybrid_server.app.settings.postgres.uri.rsplit("/", 1)[1]  # type: ignore[union-attr]
    with pg.connect(f"postgresql://chrono_reader@127.0.0.1:5432/{database}", autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("SET default_transaction_read_only = off")
        with conn.cursor() as cur, pytest.raises(pg.ProgrammingError, match="permission denied"):
            cur.execute("INSERT INTO admin_settings (key, value) VALUES ('y', '1')")
        with conn.cursor() as cur, pytest.raises(pg.ProgrammingError, match="permission denied"):
            cur.execute("SELECT hashed_password FROM users")
    assert _pg(hybrid_server, "SELECT count(*) FROM admin_settings WHERE key = 'y'")[0][0] == 0


def test_postgres_password_hashes_are_out_of_reach(hybrid_server: ServerHandle) -> None:
    with pytest.raises(flight.FlightUnauthorizedError, match="permission denied"):
        hybrid_server.get({"sql": "SELECT hashed_password FROM users"})
    emails = hybrid_server.get({"sql": "SELECT email FROM users ORDER BY id"})
    assert emails.num_rows == 12


def test_postgres_reader_role_is_granted_no_secret_column(hybrid_server: ServerHandle) -> None:
    granted = set(
        _pg(
            hybrid_server,
            "SELECT table_name::text, column_name::text FROM information_schema.column_privileges "
            "WHERE grantee = 'chrono_reader' AND privilege_type = 'SELECT'",
        )
    )
    assert {("users", "email"), ("user_sessions", "user_id"), ("audit_logs", "action")} <= granted
    assert not granted & {("users", "hashed_password"), ("user_sessions", "session_token")}
    database = hybrid_server.app.settings.postgres.uri.rsplit("/", 1)[1]  # type: ignore[union-attr]
    with pg.connect(f"postgresql://chrono_reader@127.0.0.1:5432/{database}", autocommit=True) as conn:
        with conn.cursor() as cur, pytest.raises(pg.ProgrammingError, match="permission denied"):
            cur.execute("SELECT session_token FROM user_sessions")
        with conn.cursor() as cur:
            cur.execute("SELECT count(user_id) FROM user_sessions")
            assert cur.fetchone()[0] > 0  # type: ignore[index]


def test_postgres_select_star_leaves_secret_columns_out_for_admins_too(hybrid_server: ServerHandle) -> None:
    # the reader role may not read them: SELECT * and datasets read the other columns
    for command in ({"sql": "SELECT * FROM user_sessions"}, {"dataset": "users"}, {"dataset": "user_sessions"}):
        table = hybrid_server.get(command)
        assert table.num_rows > 0
        assert not {"hashed_password", "session_token"} & set(table.column_names)
    listed = {i.descriptor.path[0]: i.schema.names for i in hybrid_server.client.list_flights() if i.descriptor.path}
    assert "email" in listed[b"users"] and "hashed_password" not in listed[b"users"]
    assert "session_token" not in listed[b"user_sessions"]


def test_postgres_reader_password_is_set_from_the_reader_uri(hybrid_server: ServerHandle) -> None:
    from flight_server.engines import postgres_schema as oltp

    uri = hybrid_server.app.settings.postgres.uri
    assert uri is not None
    has_password = "SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = 'chrono_reader'"
    try:
        oltp.apply_schema(uri, hybrid_server.app.settings.schemas_dir, "postgresql://chrono_reader:it%27s@h:5432/db")
        assert _pg(hybrid_server, has_password) == [(True,)]
    finally:  # the tests' cluster trusts local connections; leave the role as it was
        with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("ALTER ROLE chrono_reader PASSWORD NULL")
    assert _pg(hybrid_server, has_password) == [(False,)]


def test_postgres_schema_and_seed_are_idempotent(hybrid_server: ServerHandle) -> None:
    from flight_server.engines import postgres_schema as oltp

    uri = hybrid_server.app.settings.postgres.uri
    assert uri is not None
    oltp.apply_schema(uri, hybrid_server.app.settings.schemas_dir)
    assert _pg(hybrid_server, "SELECT count(*) FROM projects")[0][0] == 12
    pairs = _pg(hybrid_server, "SELECT domain, project_id FROM domains WHERE domain = 'example.com'")
    assert pairs == [("example.com", "proj-001")]


# -- deadlines and faults: servers of their own --------------------------------------------


@pytest.fixture
def own_database() -> Iterator[str]:
    name = create_database()
    yield name
    drop_database(name)


def test_postgres_query_past_deadline_is_timed_out_and_pool_recovers(tmp_path: Path, own_database: str) -> None:
    handle = start_server(
        tmp_path / "data",
        rows=0,
        query_deadline_s=0.5,
        postgres=pg_settings(own_database, pool_size=1),
        sync=NO_SYNC,
    )
    try:
        with pytest.raises(flight.FlightTimedOutError):
            handle.get({"sql": "SELECT pg_sleep(5)", "engine": "postgres"})
        # the single pooled connection is usable afterwards
        assert handle.get({"sql": "SELECT count(*) AS n FROM projects", "engine": "postgres"}).num_rows == 1
    finally:
        stop_server(handle)


def test_postgres_outage_fails_fast_and_recovers_without_restart(tmp_path: Path, own_database: str) -> None:
    proxy = TcpProxy(5432)
    handle = start_server(
        tmp_path / "data",
        rows=2_000,
        cache=CacheSettings(warm_top_n=0, l1_max_entries=0),
        postgres=pg_settings(own_database, port=proxy.port, breaker_failures=2, breaker_open_s=0.5),
        sync=NO_SYNC,
    )
    lookup = {"sql": "SELECT count(*) AS n FROM projects"}
    analytics = {"query": "domains.top", "params": {"limit": 3}}
    try:
        assert handle.get(lookup).column("n")[0].as_py() == 12
        proxy.cut()
        for _ in range(4):
            with pytest.raises(flight.FlightUnavailableError, match=r"(?i)postgres"):
                handle.get(lookup)
        with pytest.raises(flight.FlightUnavailableError, match="circuit breaker open"):
            handle.get(lookup)  # fails fast: refused by the open breaker, PostgreSQL is not tried
        assert handle.get(analytics).num_rows == 3  # DuckDB routes are unaffected
        health = handle.action("health")
        assert health["engines"]["postgres"]["status"] == "down"
        proxy.restore()

        def answered() -> bool:
            try:
                return bool(handle.get(lookup).column("n")[0].as_py() == 12)
            except flight.FlightUnavailableError:
                return False

        wait_for(answered, 30, "PostgreSQL routes did not come back")
    finally:
        proxy.cut()
        stop_server(handle)


def test_postgres_table_in_both_engines_routes_by_shape_and_falls_back(tmp_path: Path, own_database: str) -> None:
    proxy = TcpProxy(5432)
    handle = start_server(
        tmp_path / "data",
        rows=2_000,
        cache=CacheSettings(warm_top_n=0, l1_max_entries=0),
        postgres=pg_settings(own_database, port=proxy.port, breaker_failures=1, breaker_open_s=30),
        sync=NO_SYNC,
    )
    try:
        metrics = handle.get({"sql": "SELECT metric_id, metric_type, value FROM performance_metrics LIMIT 500"})
        uri = handle.app.settings.postgres.uri
        assert uri is not None
        with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
            cur.adbc_ingest("performance_metrics", metrics, mode="create")
            cur.execute("GRANT SELECT ON performance_metrics TO chrono_reader")
        handle.app.registry.refresh()
        analytical = {"sql": "SELECT metric_type, count(*) AS n FROM performance_metrics GROUP BY 1 ORDER BY 1"}
        assert _with_metadata(handle, analytical)[1]["engine"] == "duckdb"
        first_id = metrics.column("metric_id")[0].as_py()
        lookup = {"sql": "SELECT value FROM performance_metrics WHERE metric_id = $1", "params": [first_id]}
        table, meta = _with_metadata(handle, lookup)
        assert meta["engine"] == "postgres" and "lookup" in meta["reason"]
        proxy.cut()
        with pytest.raises(flight.FlightUnavailableError):
            handle.get(lookup)  # the failure that opens the breaker
        fallback, meta = _with_metadata(handle, lookup)
        assert meta["engine"] == "duckdb" and "falling back" in meta["reason"]
        assert fallback.equals(table)
    finally:
        proxy.cut()
        stop_server(handle)


def test_postgres_hybrid_named_query_stays_hybrid_when_tables_are_copied(tmp_path: Path, own_database: str) -> None:
    handle = start_server(
        tmp_path / "data",
        rows=2_000,
        cache=CacheSettings(warm_top_n=0),
        postgres=pg_settings(own_database),
        sync=NO_SYNC,
    )
    try:
        cdx = handle.get({"sql": "SELECT * FROM cdx_records"})
        uri = handle.app.settings.postgres.uri
        assert uri is not None
        with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
            cur.adbc_ingest("cdx_records", cdx, mode="create")
            cur.execute("GRANT SELECT ON cdx_records TO chrono_reader")
        handle.app.registry.refresh()
        table, meta = _with_metadata(handle, {"query": "projects.performance", "params": {"project_id": "proj-001"}})
        assert meta["engine"] == "hybrid" and table.num_rows == 1
        explained = handle.action("explain", {"query": "projects.performance", "params": {"project_id": "proj-001"}})
        assert "cdx_records" not in {f["table"] for f in explained["postgres_fetches"]}  # read from DuckDB
    finally:
        stop_server(handle)


def test_postgres_join_of_postgres_tables_keeps_qualifiers(hybrid_server: ServerHandle) -> None:
    sql = "SELECT p.id, u.id AS owner FROM projects p JOIN users u ON u.id = p.owner_id WHERE p.id = $1"
    table, meta = _with_metadata(hybrid_server, {"sql": sql, "params": ["proj-001"]})
    assert meta["engine"] == "postgres"
    assert table.column("id").to_pylist() == ["proj-001"]
