"""Flight SQL statements through stock drivers: ADBC (DB-API), Polars and pandas."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adbc_driver_manager
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_server.demo.analytics import DEMO_PROJECTS
from flight_server.flightsql import flight_cancel_pb2 as cancel_pb
from flight_server.flightsql import flight_session_pb2 as session_pb
from flight_server.flightsql import flight_sql_pb2 as sql
from flight_server.settings import AuthSettings, CacheSettings, LimitSettings

from support.flightsql import action, connect, descriptor
from support.servers import ServerHandle, start_server, stop_server
from support.tokens import SECRET, options, token
from support.waiting import wait_for

SLOW = "SELECT count(*) FROM cdx_records a, cdx_records b WHERE a.domain || b.domain = 'x'"


@pytest.fixture(scope="module")
def conn(server: ServerHandle) -> Iterator[Any]:
    with connect(server) as connection:
        yield connection


def test_flightsql_statement_fetches_arrow(conn: Any, server: ServerHandle) -> None:
    query = "SELECT domain, count(*) AS n FROM cdx_records GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5"
    with conn.cursor() as cur:
        cur.execute(query)
        table = cur.fetch_arrow_table()
    assert table.column_names == ["domain", "n"]
    assert table.equals(server.run({"sql": query}))


def test_flightsql_flight_info_carries_the_routing_metadata(server: ServerHandle) -> None:
    info = server.client.get_flight_info(
        descriptor(sql.CommandStatementQuery(query="SELECT count(*) FROM cdx_records"))
    )
    metadata = json.loads(info.app_metadata)
    assert {"engine", "reason", "cache", "query_id"} <= set(metadata)
    ticket = info.endpoints[0].ticket.ticket
    assert server.client.do_get(flight.Ticket(ticket)).read_all().num_rows == 1


def test_flightsql_json_commands_keep_working(server: ServerHandle) -> None:
    assert server.get({"sql": "SELECT 1 AS x"}).to_pylist() == [{"x": 1}]


def test_flightsql_parameters_bind_positionally(conn: Any, server: ServerHandle) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n FROM cdx_records WHERE domain = ? AND status_code = ?", ("example.com", 200))
        (count,) = cur.fetchone()
    expected = server.get(
        {"sql": "SELECT count(*) AS n FROM cdx_records WHERE domain = $1 AND status_code = $2",
         "params": ["example.com", 200]}
    )  # fmt: skip
    assert count == expected.column("n")[0].as_py() > 0


def test_flightsql_many_parameter_rows_run_once_each(conn: Any) -> None:
    rows = pa.table({"0": ["example.com", "wikipedia.org", "no-such-domain.test"]})
    with conn.cursor() as cur:
        cur.execute(
            "SELECT ? AS domain, count(*) AS n FROM cdx_records WHERE domain = ?",
            pa.table({"0": rows.column(0), "1": rows.column(0)}),
        )
        result = cur.fetch_arrow_table().to_pylist()
    assert [r["domain"] for r in result] == rows.column(0).to_pylist()
    assert result[0]["n"] > 0 and result[2]["n"] == 0


def _run_bound(handle: ServerHandle, bearer: str, query: str, values: list[Any]) -> pa.Table:
    """Prepare `query`, bind one parameter row per value (DoPut), then fetch the result."""
    call = options(bearer)
    request = sql.ActionCreatePreparedStatementRequest(query=query)
    [raw] = action(handle.client, "CreatePreparedStatement", _pack(request), call)
    prepared = _unpack(raw, sql.ActionCreatePreparedStatementResult)
    [name] = pa.ipc.read_schema(pa.py_buffer(prepared.parameter_schema)).names
    command = sql.CommandPreparedStatementQuery(prepared_statement_handle=prepared.prepared_statement_handle)
    rows = pa.table({name: pa.array(values, pa.string())})
    writer, acks = handle.client.do_put(descriptor(command), rows.schema, options=call)
    writer.write_table(rows)
    writer.done_writing()
    acks.read()
    writer.close()
    info = handle.client.get_flight_info(descriptor(command), options=call)
    return handle.client.do_get(info.endpoints[0].ticket, options=call).read_all()


def test_flightsql_bound_rows_stream_under_the_result_budget(tmp_path: Path) -> None:
    limit, per_row, bound = 1_000, 100, 200
    handle = start_server(
        tmp_path,
        rows=5_000,
        auth=AuthSettings(jwt_secret=SECRET),
        cache=CacheSettings(warm_top_n=0),
        limits=LimitSettings(max_result_rows=limit),
    )
    # each parameter row runs the statement once: a distinct value is a cache miss of its own
    query = f"SELECT id FROM cdx_records WHERE id <> $1 LIMIT {per_row}"
    analyst = token("analyst", [project for project, _, _ in DEMO_PROJECTS])

    def runs() -> int:
        [stats] = action(handle.client, "cache.stats", b"", options(token("admin")))
        return int(json.loads(stats)["misses"])

    try:
        before = runs()
        with pytest.raises(flight.FlightServerError, match="RESOURCE_EXHAUSTED: result larger than your row"):
            _run_bound(handle, analyst, query, [f"a-{i}" for i in range(bound)])
        # the run stopped at the first row past the budget instead of running all 200 first
        assert runs() - before == limit // per_row + 1
        assert _run_bound(handle, analyst, query, [f"b-{i}" for i in range(5)]).num_rows == 5 * per_row
        before = runs()
        everything = _run_bound(handle, token("admin"), query, [f"c-{i}" for i in range(bound)])
        assert everything.num_rows == bound * per_row and runs() - before == bound
    finally:
        stop_server(handle)


def test_flightsql_prepared_statement_is_reused(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.adbc_prepare("SELECT count(*) FROM cdx_records WHERE domain = ?")
        counts = []
        for domain in ("example.com", "wikipedia.org", "example.com"):
            cur.execute("SELECT count(*) FROM cdx_records WHERE domain = ?", (domain,))
            counts.append(cur.fetchone()[0])
    assert counts[0] == counts[2] and counts[0] != counts[1]


def test_flightsql_prepare_returns_both_schemas(server: ServerHandle) -> None:
    request = sql.ActionCreatePreparedStatementRequest(query="SELECT domain FROM cdx_records WHERE id = $1 LIMIT $2")
    [raw] = action(server.client, "CreatePreparedStatement", _pack(request))
    result = _unpack(raw, sql.ActionCreatePreparedStatementResult)
    assert pa.ipc.read_schema(pa.py_buffer(result.dataset_schema)).names == ["domain"]
    assert pa.ipc.read_schema(pa.py_buffer(result.parameter_schema)).names == ["1", "2"]
    close = sql.ActionClosePreparedStatementRequest(prepared_statement_handle=result.prepared_statement_handle)
    assert action(server.client, "ClosePreparedStatement", _pack(close)) == []


def test_flightsql_prepared_statement_without_its_parameters_is_refused(server: ServerHandle) -> None:
    request = sql.ActionCreatePreparedStatementRequest(query="SELECT * FROM cdx_records WHERE id = ?")
    [raw] = action(server.client, "CreatePreparedStatement", _pack(request))
    handle = _unpack(raw, sql.ActionCreatePreparedStatementResult).prepared_statement_handle
    command = sql.CommandPreparedStatementQuery(prepared_statement_handle=handle)
    with pytest.raises(pa.ArrowInvalid, match="bind their values"):
        server.client.get_flight_info(descriptor(command))


@pytest.mark.parametrize(
    "query",
    ["SELECT count(*) AS n FROM duckdb.main.cdx_records", "SELECT count(*) AS n FROM main.cdx_records"],
)
def test_flightsql_qualified_duckdb_names(conn: Any, server: ServerHandle, query: str) -> None:
    with conn.cursor() as cur:
        cur.execute(query)
        assert cur.fetchone()[0] == server.get({"sql": "SELECT count(*) AS n FROM cdx_records"})["n"][0].as_py()


@pytest.mark.parametrize("query", ["SELECT * FROM duckdb.analytics.domains_top", "SELECT * FROM analytics.domains_top"])
def test_flightsql_analytics_view_runs_the_named_query(conn: Any, server: ServerHandle, query: str) -> None:
    with conn.cursor() as cur:
        cur.execute(query)
        assert cur.fetch_arrow_table().equals(server.get({"query": "domains.top"}))


@pytest.mark.postgres
def test_flightsql_qualified_postgres_names_route_to_postgres(hybrid_server: ServerHandle) -> None:
    query = "SELECT count(*) AS n FROM postgres.public.projects"
    info = hybrid_server.client.get_flight_info(descriptor(sql.CommandStatementQuery(query=query)))
    assert json.loads(info.app_metadata)["engine"] == "postgres"
    with connect(hybrid_server) as connection, connection.cursor() as cur:
        cur.execute(query)
        assert cur.fetchone()[0] == hybrid_server.get({"sql": "SELECT count(*) AS n FROM projects"})["n"][0].as_py()


def test_flightsql_parameters_reach_postgres_and_hybrid_queries(hybrid_server: ServerHandle) -> None:
    with connect(hybrid_server) as connection, connection.cursor() as cur:
        cur.execute("SELECT id, name FROM postgres.public.projects WHERE id = ?", ("proj-001",))
        [(project, name)] = cur.fetchall()
        cur.execute(
            "SELECT p.name, count(*) AS n FROM postgres.public.projects p "
            "JOIN duckdb.main.cdx_records c ON c.project_id = p.id WHERE p.id = ? GROUP BY 1",
            (project,),
        )
        [(joined, count)] = cur.fetchall()
    assert project == "proj-001" and joined == name and count > 0


def test_flightsql_placeholders_bind_in_text_order(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT ? AS first, (SELECT ? || 'z') AS second, coalesce(NULL, ?) AS third", ("a", "b", "c"))
        assert cur.fetchone() == ("a", "bz", "c")


def test_flightsql_analytics_view_in_a_larger_query_is_refused(conn: Any) -> None:
    with conn.cursor() as cur, pytest.raises(adbc_driver_manager.Error, match="SELECT \\* FROM analytics"):
        cur.execute("SELECT domain FROM analytics.domains_top WHERE domain = 'x'")


def test_flightsql_unknown_catalog_is_refused(conn: Any) -> None:
    with conn.cursor() as cur, pytest.raises(adbc_driver_manager.Error, match="unknown catalog 'mysql'"):
        cur.execute("SELECT * FROM mysql.main.cdx_records")


def test_flightsql_update_is_refused_read_only(server: ServerHandle) -> None:
    command = sql.CommandStatementUpdate(query="DELETE FROM cdx_records")
    writer, _ = server.client.do_put(descriptor(command), pa.schema([]))
    with pytest.raises(pa.ArrowInvalid, match="read-only"):
        writer.close()


def test_flightsql_dml_through_the_driver_is_refused(conn: Any) -> None:
    with conn.cursor() as cur, pytest.raises(adbc_driver_manager.Error, match=r"read-only|only read-only queries"):
        cur.executemany("DELETE FROM cdx_records WHERE id = ?", [(1,), (2,)])


@pytest.mark.parametrize("name", ["BeginTransaction", "EndTransaction", "BeginSavepoint", "EndSavepoint"])
def test_flightsql_transactions_are_refused(server: ServerHandle, name: str) -> None:
    with pytest.raises(pa.ArrowInvalid, match="transactions are not supported"):
        action(server.client, name, _pack(sql.ActionBeginTransactionRequest()))


def test_flightsql_polars_reads_through_adbc(conn: Any, server: ServerHandle) -> None:
    frame = pl.read_database("SELECT domain, status_code FROM cdx_records ORDER BY id LIMIT 100", connection=conn)
    assert frame.shape == (100, 2)
    assert frame["domain"].dtype == pl.String


def test_flightsql_pandas_reads_through_adbc(conn: Any) -> None:
    frame = pd.read_sql("SELECT domain, count(*) AS n FROM cdx_records GROUP BY 1", conn)
    assert list(frame.columns) == ["domain", "n"] and len(frame) > 10


def test_flightsql_type_policy_applies_to_results(conn: Any) -> None:
    query = (
        "SELECT TIMESTAMPTZ '2024-05-01 10:00:00+02' AS at, 12345678901234567890123::HUGEINT::DECIMAL(38, 0) AS big,"
        " 'x'::VARCHAR AS s"
    )
    with conn.cursor() as cur:
        cur.execute(query)
        table = cur.fetch_arrow_table()
    assert table.schema.field("at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("s").type == pa.string()
    assert table.column("at")[0].as_py().isoformat() == "2024-05-01T08:00:00+00:00"


def test_flightsql_driver_cancel_stops_a_long_query(server: ServerHandle) -> None:
    errors: list[BaseException] = []
    with connect(server) as connection, connection.cursor() as cur:

        def run() -> None:
            try:
                cur.execute(SLOW)
                cur.fetchall()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        wait_for(lambda: len(server.app.running) > 0)
        cur.adbc_cancel()
        thread.join(timeout=120)
    assert not thread.is_alive() and errors
    wait_for(lambda: len(server.app.running) == 0)
    assert server.get({"sql": "SELECT 42 AS x"}).to_pylist() == [{"x": 42}]


@pytest.mark.parametrize("how", ["CancelFlightInfo", "CancelQuery"])
def test_flightsql_cancel_flight_info_stops_the_query(server: ServerHandle, how: str) -> None:
    info = server.client.get_flight_info(descriptor(sql.CommandStatementQuery(query=SLOW)))
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            server.client.do_get(info.endpoints[0].ticket).read_all()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=fetch)
    thread.start()
    query_id = json.loads(info.app_metadata)["query_id"]
    wait_for(lambda: query_id in server.app.running)
    if how == "CancelFlightInfo":
        body = cancel_pb.CancelFlightInfoRequest(info=info.serialize()).SerializeToString()
        [raw] = action(server.client, how, body)
        assert cancel_pb.CancelFlightInfoResult.FromString(raw).status == cancel_pb.CANCEL_STATUS_CANCELLED
    else:
        [raw] = action(server.client, how, _pack(sql.ActionCancelQueryRequest(info=info.serialize())))
        result = _unpack(raw, sql.ActionCancelQueryResult)
        assert result.result == sql.ActionCancelQueryResult.CANCEL_RESULT_CANCELLED
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert errors and "cancel" in str(errors[0]).lower()
    assert server.get({"sql": "SELECT 7 AS x"}).to_pylist() == [{"x": 7}]


def test_flightsql_cancel_of_an_unknown_query_is_not_cancellable(server: ServerHandle) -> None:
    foreign = flight.FlightEndpoint(b'{"sql": "SELECT 1"}', [])
    info = flight.FlightInfo(pa.schema([]), flight.FlightDescriptor.for_command(b"x"), [foreign], -1, -1)
    body = cancel_pb.CancelFlightInfoRequest(info=info.serialize()).SerializeToString()
    [raw] = action(server.client, "CancelFlightInfo", body)
    assert cancel_pb.CancelFlightInfoResult.FromString(raw).status == cancel_pb.CANCEL_STATUS_NOT_CANCELLABLE


def test_flightsql_actions_are_listed(server: ServerHandle) -> None:
    names = {a.type for a in server.client.list_actions()}
    assert {"CreatePreparedStatement", "ClosePreparedStatement", "CancelFlightInfo", "health"} <= names


def _pack(message: Any) -> bytes:
    from flight_server.flightsql.protocol import pack

    return pack(message)


def _unpack(raw: bytes, cls: Any) -> Any:
    from google.protobuf import any_pb2

    wrapper = any_pb2.Any.FromString(raw)
    message = cls()
    assert wrapper.Unpack(message)
    return message


def test_flightsql_parameter_types_follow_the_compared_columns(server: ServerHandle, conn: Any) -> None:
    query = (
        "SELECT c.domain FROM cdx_records AS c WHERE c.status_code IN (?, ?) AND unix_timestamp BETWEEN ? AND ? "
        "AND c.domain LIKE ? AND created_at >= ? AND upper(mime_type) = ?"
    )
    request = sql.ActionCreatePreparedStatementRequest(query=query)
    [raw] = action(server.client, "CreatePreparedStatement", _pack(request))
    result = _unpack(raw, sql.ActionCreatePreparedStatementResult)
    parameters = pa.ipc.read_schema(pa.py_buffer(result.parameter_schema))
    assert [f.type for f in parameters] == [
        pa.int32(), pa.int32(), pa.int64(), pa.int64(), pa.string(), pa.timestamp("us"), pa.string(),
    ]  # fmt: skip
    with conn.cursor() as cur:  # typed values bind as they are
        cur.execute(query, (200, 301, 0, 2**40, "%example%", dt.datetime(1990, 1, 1), "TEXT/HTML"))
        assert cur.fetch_arrow_table().num_rows > 0


@pytest.mark.parametrize(
    ("handle", "reason"),
    [
        (b'{"prepared": "not-hex!", "query_id": "q1"}', "malformed statement ticket"),
        (b'{"prepared": 12, "query_id": "q1"}', "malformed statement ticket"),
        (b'{"command": {"sql": "SELECT 1"}}', "malformed statement ticket"),
        (b'["query_id"]', "malformed statement ticket"),
        (b'{"query_id": "q1", "command": ' + b"[" * 4000 + b"]" * 4000 + b"}", "deeper than 32 levels"),
        (b"\xff{", "the statement ticket must be JSON"),
    ],
)
def test_flightsql_malformed_statement_ticket_is_invalid_argument(
    server: ServerHandle, handle: bytes, reason: str
) -> None:
    ticket = flight.Ticket(_pack(sql.TicketStatementQuery(statement_handle=handle)))
    with pytest.raises(pa.ArrowInvalid, match=reason):
        server.client.do_get(ticket).read_all()
    endpoints = [flight.FlightEndpoint(ticket, [])]
    info = flight.FlightInfo(pa.schema([]), descriptor(sql.CommandStatementQuery(query="x")), endpoints, -1, -1)
    body = cancel_pb.CancelFlightInfoRequest(info=info.serialize()).SerializeToString()
    [raw] = action(server.client, "CancelFlightInfo", body)  # not a query of this caller: nothing to cancel
    assert cancel_pb.CancelFlightInfoResult.FromString(raw).status == cancel_pb.CANCEL_STATUS_NOT_CANCELLABLE
    assert server.get({"sql": "SELECT 7 AS x"}).to_pylist() == [{"x": 7}]


def test_flightsql_adbc_go_driver_reads_a_table_larger_than_its_message_limit(conn: Any, server: ServerHandle) -> None:
    # the Go driver refuses messages over 16 MiB; the engine's batches of this table are about 18 MB
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM cdx_records")
        table = cur.fetch_arrow_table()
    assert table.num_rows == 200_000
    assert (
        table.column("id").to_pylist()[:3]
        == server.get({"sql": "SELECT id FROM cdx_records LIMIT 3"})["id"].to_pylist()
    )
    # the same statement read with pyarrow: every message within the server's bound
    info = server.client.get_flight_info(descriptor(sql.CommandStatementQuery(query="SELECT * FROM cdx_records")))
    sizes = [pa.ipc.get_record_batch_size(chunk.data) for chunk in server.client.do_get(info.endpoints[0].ticket)]
    assert len(sizes) > 2 and max(sizes) <= server.app.settings.max_message_bytes


def test_flightsql_driver_disconnect_closes_its_session_as_a_supported_action(
    server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flight_server.server")
    with connect(server) as connection, connection.cursor() as cur:  # the driver sends CloseSession on close
        cur.execute("SELECT 1 AS one")
        assert cur.fetchall() == [(1,)]

    def closes() -> list[dict[str, Any]]:
        fields = [getattr(record, "fields", {}) for record in caplog.records]
        return [f for f in fields if f.get("route") == "CloseSession"]

    assert [f["status"] for f in wait_for(closes, 30, "the driver's CloseSession never arrived")] == ["ok"]
    [raw] = action(server.client, "CloseSession", b"")
    assert session_pb.CloseSessionResult.FromString(raw).status == session_pb.CloseSessionResult.CLOSED
    assert "CloseSession" in {a.type for a in server.client.list_actions()}
