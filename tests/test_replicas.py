"""The router reading DuckDB replicas of OLTP tables, within the staleness a caller asks for."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flight_server.replicas import to_replicas
from flight_server.security.scoping import scope_sql
from flight_server.settings import CacheSettings, PostgresSettings, SyncSettings

from support.proxies import TcpProxy
from support.servers import ServerHandle, create_database, drop_database, pg_settings, start_server, stop_server
from support.sync import get_with_metadata, pg_exec, synced
from support.waiting import wait_for

pytestmark = pytest.mark.postgres

ANALYTICAL = {"sql": "SELECT status, count(*) AS n FROM scrape_pages GROUP BY status ORDER BY status"}


@dataclass
class ProxiedSync:
    """A server whose sync reaches PostgreSQL through a proxy; user queries go direct."""

    handle: ServerHandle
    proxy: TcpProxy
    direct_uri: str  # the schema owner, not through the proxy


@pytest.fixture(scope="module")
def replica_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedSync]:
    database = create_database()
    proxy = TcpProxy(5432)
    direct = pg_settings(database)
    handle = start_server(
        tmp_path_factory.mktemp("replicas"),
        rows=2_000,
        cache=CacheSettings(warm_top_n=0),
        postgres=PostgresSettings(
            uri=f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}", reader_uri=direct.reader_uri
        ),
        sync=SyncSettings(poll_interval_s=0.05, validate_interval_s=0, backoff_initial_s=0.1, backoff_max_s=0.5),
    )
    wait_for(lambda: handle.app.sync is not None and handle.app.sync.staleness("scrape_pages") is not None)
    assert direct.uri is not None
    yield ProxiedSync(handle, proxy, direct.uri)
    stop_server(handle)
    drop_database(database)


def test_replica_serves_analytical_queries_with_staleness(replica_server: ProxiedSync) -> None:
    handle = replica_server.handle
    table, meta = get_with_metadata(handle, {**ANALYTICAL, "cache": "bypass"})
    assert meta["engine"] == "duckdb" and meta["replica"] is True
    assert meta["replica_tables"] == ["scrape_pages"]
    assert 0 <= meta["staleness_s"] <= 5 and "replicas" in meta["reason"]
    direct, pg_meta = get_with_metadata(handle, {**ANALYTICAL, "engine": "postgres", "cache": "bypass"})
    assert pg_meta["engine"] == "postgres" and pg_meta["replica"] is False
    assert table.to_pylist() == direct.to_pylist()


def test_replica_is_skipped_for_lookups_hints_zero_bound_and_secrets(replica_server: ProxiedSync) -> None:
    handle = replica_server.handle
    lookup = {"sql": "SELECT name FROM projects WHERE id = $1", "params": ["proj-001"]}
    assert get_with_metadata(handle, lookup)[1]["engine"] == "postgres"
    assert get_with_metadata(handle, {**ANALYTICAL, "max_staleness_s": 0})[1]["engine"] == "postgres"
    assert get_with_metadata(handle, {**ANALYTICAL, "engine": "postgres"})[1]["engine"] == "postgres"
    with pytest.raises(flight.FlightUnauthorizedError, match="permission denied"):  # PostgreSQL grants answer
        handle.get({"sql": "SELECT count(DISTINCT hashed_password) FROM users"})


def test_replica_turns_a_hybrid_query_into_one_duckdb_query(replica_server: ProxiedSync) -> None:
    handle = replica_server.handle
    sql = (
        "SELECT p.name, count(*) AS captures FROM cdx_records c JOIN projects p ON p.id = c.project_id "
        "GROUP BY p.name ORDER BY captures DESC, p.name"
    )
    table, meta = get_with_metadata(handle, {"sql": sql, "cache": "bypass"})
    assert meta["engine"] == "duckdb" and meta["replica_tables"] == ["projects"]
    hybrid, hybrid_meta = get_with_metadata(handle, {"sql": sql, "max_staleness_s": 0, "cache": "bypass"})
    assert hybrid_meta["engine"] == "hybrid"
    assert table.to_pylist() == hybrid.to_pylist()


def test_replica_named_query_declared_for_postgres_reads_the_replica(replica_server: ProxiedSync) -> None:
    handle = replica_server.handle
    command = {"query": "system.user_activity", "params": {"days": 30}, "cache": "bypass"}
    table, meta = get_with_metadata(handle, command)
    reference, ref_meta = get_with_metadata(handle, {**command, "max_staleness_s": 0})
    assert meta["replica"] is True and ref_meta["replica"] is False
    assert table.num_rows == reference.num_rows
    descriptor = flight.FlightDescriptor.for_command(b'{"query": "system.user_activity", "params": {"days": 30}}')
    assert handle.client.get_flight_info(descriptor).schema.names == table.schema.names


def test_replica_never_serves_a_read_older_than_asked(replica_server: ProxiedSync) -> None:
    handle, proxy = replica_server.handle, replica_server.proxy
    sync = handle.app.sync
    assert sync is not None
    proxy.cut()  # the sync loses PostgreSQL; user queries still reach it directly
    try:
        wait_for(lambda: (sync.staleness("scrape_pages") or 0) > 1.0, message="waiting for the replica to fall behind")
        change = "UPDATE scrape_pages SET status = 'pending' WHERE id = (SELECT min(id) FROM scrape_pages)"
        pg_exec(replica_server.direct_uri, change)
        fresh, meta = get_with_metadata(handle, {**ANALYTICAL, "max_staleness_s": 0.5})
        assert meta["engine"] == "postgres" and meta["replica"] is False
        _, stale_meta = get_with_metadata(handle, {**ANALYTICAL, "max_staleness_s": 3600})
        assert stale_meta["replica"] is True and stale_meta["staleness_s"] > 1.0
        assert handle.action("sync.status")["state"] == "paused"
        assert handle.action("health")["sync"]["state"] == "paused"
    finally:
        proxy.restore()
    wait_for(lambda: (sync.staleness("scrape_pages") or 99) < 1.0, message="waiting for the sync to resume by itself")
    resumed, resumed_meta = get_with_metadata(handle, {**ANALYTICAL, "max_staleness_s": 1.0})
    assert resumed_meta["replica"] is True
    assert resumed.to_pylist() == fresh.to_pylist()  # the update made during the outage arrived


def test_replica_answers_while_postgres_is_down_unless_a_bound_forbids(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    database = create_database()
    proxy = TcpProxy(5432)
    handle = start_server(
        tmp_path_factory.mktemp("down"),
        rows=1_000,
        cache=CacheSettings(warm_top_n=0, l1_max_entries=0),
        postgres=pg_settings(database, port=proxy.port, breaker_failures=1, breaker_open_s=30),
        sync=SyncSettings(poll_interval_s=0.05, validate_interval_s=0, backoff_initial_s=0.1, backoff_max_s=0.5),
    )
    try:
        wait_for(lambda: handle.app.sync is not None and handle.app.sync.staleness("scrape_pages") is not None)
        expected = handle.get(ANALYTICAL)
        proxy.cut()
        # a lookup stays on PostgreSQL; failing there opens the breaker, and the replica answers it
        _, lookup_meta = get_with_metadata(
            handle, {"sql": "SELECT name FROM projects WHERE id = $1", "params": ["proj-001"]}
        )
        assert lookup_meta["replica"] is True
        assert handle.app.postgres is not None and handle.app.postgres.breaker.state == "open"
        table, meta = get_with_metadata(handle, ANALYTICAL)
        assert meta["replica"] is True and "PostgreSQL unavailable" in meta["reason"]
        assert table.to_pylist() == expected.to_pylist()

        def refused_as_stale() -> bool:  # once the replica, no longer synced, is 0.1 s behind
            try:
                handle.get({**ANALYTICAL, "max_staleness_s": 0.1})
            except flight.FlightUnavailableError as exc:
                assert "stale, over the max_staleness_s" in str(exc)
                return True
            return False

        wait_for(refused_as_stale, 30, "a replica 0.1 s behind to be refused for a 0.1 s bound")
    finally:
        proxy.restore()
        stop_server(handle)
        drop_database(database)


def test_replica_answers_the_first_query_after_postgres_goes_down(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Before the breaker has seen a failure, a query routed to PostgreSQL fails there and is re-planned."""
    database = create_database()
    proxy = TcpProxy(5432)
    handle = start_server(
        tmp_path_factory.mktemp("first-down"),
        rows=1_000,
        cache=CacheSettings(warm_top_n=0, l1_max_entries=0),
        postgres=pg_settings(database, port=proxy.port, breaker_failures=3, breaker_open_s=30),
        sync=SyncSettings(poll_interval_s=0.05, validate_interval_s=0, backoff_initial_s=0.1, backoff_max_s=0.5),
    )
    lookup = {"sql": "SELECT name FROM projects WHERE id = $1", "params": ["proj-001"]}  # a lookup: PostgreSQL's
    try:
        wait_for(lambda: handle.app.sync is not None and handle.app.sync.staleness("projects") is not None)
        expected = handle.get(lookup)
        assert get_with_metadata(handle, lookup)[1]["engine"] == "postgres"
        proxy.cut()
        assert handle.app.postgres is not None and handle.app.postgres.breaker.state == "closed"
        table, meta = get_with_metadata(handle, lookup)  # the very first query after the outage
        assert meta["replica"] is True and "PostgreSQL unavailable" in meta["reason"]
        assert table.to_pylist() == expected.to_pylist()
        # GetFlightInfo then DoGet: the FlightInfo already names the replica plan
        descriptor = flight.FlightDescriptor.for_command(json.dumps({**lookup, "params": ["proj-002"]}).encode())
        info = handle.client.get_flight_info(descriptor)
        assert json.loads(info.app_metadata)["replica"] is True
        assert handle.client.do_get(info.endpoints[0].ticket).read_all().num_rows == 1
        with pytest.raises(flight.FlightUnavailableError, match=r"(?i)postgres\S* is unavailable"):
            handle.get({**lookup, "engine": "postgres"})  # asked for PostgreSQL itself: no replica instead
    finally:
        proxy.restore()
        stop_server(handle)
        drop_database(database)


def test_replica_cached_result_is_not_served_after_new_changes(replica_server: ProxiedSync) -> None:
    handle = replica_server.handle
    command = {"sql": "SELECT count(*) AS n FROM project_pages", "max_staleness_s": 60}
    before, _ = get_with_metadata(handle, command)
    _, again_meta = get_with_metadata(handle, command)
    assert again_meta["cache"] == "hit-l1" and again_meta["replica"] is True
    pg_exec(replica_server.direct_uri, "DELETE FROM project_pages WHERE id = (SELECT min(id) FROM project_pages)")
    synced(handle)
    after, after_meta = get_with_metadata(handle, command)
    assert after_meta["cache"] == "miss"
    assert after.column("n")[0].as_py() == before.column("n")[0].as_py() - 1


@settings(max_examples=40, deadline=None)
@given(
    alias=st.sampled_from(["p", "t", "x1"]),
    extra=st.sampled_from(["", " WHERE p.name <> 'z'", " WHERE p.id IN (SELECT project_id FROM domains)"]),
)
def test_replica_rewrite_points_only_replicated_tables(alias: str, extra: str) -> None:
    where = extra.replace("p.", f"{alias}.")
    sql = f"WITH domains AS (SELECT 1 AS project_id) SELECT count(*) FROM projects AS {alias}{where}"
    rewritten = to_replicas(sql, ("domains", "projects"))
    assert "replica.projects" in rewritten
    assert "replica.domains" not in rewritten  # a CTE of that name is not the table


def test_replica_bound_also_ages_out_cached_postgres_results(replica_server: ProxiedSync) -> None:
    handle = replica_server.handle
    command = {"sql": "SELECT approval_status, count(*) AS n FROM users GROUP BY 1", "engine": "postgres"}
    get_with_metadata(handle, command)
    assert get_with_metadata(handle, command)[1]["cache"] == "hit-l1"
    assert get_with_metadata(handle, {**command, "max_staleness_s": 60})[1]["cache"] == "hit-l1"
    # polled until the cached result is older than the bound: a hit before, a miss after
    table, _meta = wait_for(
        lambda: (got := get_with_metadata(handle, {**command, "max_staleness_s": 0.2}))[1]["cache"] == "miss" and got,
        30,
        "the cached result to age out of a 0.2 s bound",
    )
    assert b"chrono:cached_at" not in (table.schema.metadata or {})


def test_replica_rewrite_keeps_project_scoping() -> None:
    # the executor's order: pointed at the replicas first, then scoped to the caller's projects
    replicated = to_replicas(
        "SELECT p.name, count(*) FROM scrape_pages s JOIN projects p ON p.id = s.project_id GROUP BY 1",
        ("projects", "scrape_pages"),
    )
    rewritten = scope_sql(replicated, ["proj-001"], {"scrape_pages": "project_id", "projects": "id"})
    assert "FROM replica.scrape_pages WHERE \"project_id\" IN ('proj-001')" in rewritten
    assert "FROM replica.projects WHERE \"id\" IN ('proj-001')" in rewritten


def test_replica_engine_hint_duckdb_asks_for_the_replicas(replica_server: ProxiedSync) -> None:
    handle = replica_server.handle
    lookup = {"sql": "SELECT name FROM projects WHERE id = $1", "params": ["proj-001"], "cache": "bypass"}
    table, meta = get_with_metadata(handle, {**lookup, "engine": "duckdb"})
    assert meta["engine"] == "duckdb" and meta["replica"] is True and "engine hint 'duckdb'" in meta["reason"]
    assert table.to_pylist() == get_with_metadata(handle, lookup)[0].to_pylist()  # the same row from PostgreSQL
    with pytest.raises(flight.FlightUnavailableError, match="over the max_staleness_s 0 asked for"):
        handle.get({**lookup, "engine": "duckdb", "max_staleness_s": 0})
    with pytest.raises(pa.ArrowInvalid, match="admin_settings has no DuckDB replica"):  # INVALID_ARGUMENT
        handle.get({"sql": "SELECT count(*) FROM admin_settings", "engine": "duckdb"})
