"""The Flight surface against a real server: info, streaming, listing, actions, errors."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.servers import ServerHandle, start_server, stop_server
from support.waiting import wait_for


def _descriptor(command: dict[str, object]) -> flight.FlightDescriptor:
    return flight.FlightDescriptor.for_command(json.dumps(command).encode())


def test_server_flight_info_carries_schema_ticket_and_metadata(server: ServerHandle) -> None:
    info = server.client.get_flight_info(_descriptor({"query": "domains.top", "params": {"limit": 3}}))
    metadata = json.loads(info.app_metadata)
    assert metadata["engine"] == "duckdb"
    assert metadata["cache"] in ("miss", "bypass", "hit-l1", "hit-l2")
    assert "named query" in metadata["reason"]
    assert len(metadata["query_id"]) >= 8
    table = server.client.do_get(info.endpoints[0].ticket).read_all()
    assert table.schema.equals(info.schema)
    assert table.num_rows == 3


def test_server_ticket_is_the_command_json(server: ServerHandle) -> None:
    via_info = server.run({"sql": "SELECT domain, count(*) AS n FROM cdx_records GROUP BY 1 ORDER BY 2 DESC, 1"})
    direct = server.get({"sql": "SELECT domain, count(*) AS n FROM cdx_records GROUP BY 1 ORDER BY 2 DESC, 1"})
    assert via_info.equals(direct)
    assert direct.column("domain")[0].as_py() == "example.com"


def test_server_raw_sql_binds_positional_params(server: ServerHandle) -> None:
    table = server.get({"sql": "SELECT count(*) AS n FROM cdx_records WHERE domain = $1", "params": ["example.com"]})
    expected = server.get({"sql": "SELECT count(*) AS n FROM cdx_records WHERE domain = 'example.com'"})
    assert table.column("n")[0].as_py() == expected.column("n")[0].as_py() > 0


def test_server_first_batch_metadata_has_cache_status(server: ServerHandle) -> None:
    reader = server.client.do_get(flight.Ticket(json.dumps({"sql": "SELECT * FROM cdx_records"}).encode()))
    chunk = reader.read_chunk()
    metadata = json.loads(chunk.app_metadata.to_pybytes())
    assert metadata["cache"] in ("miss", "hit-l1", "hit-l2")
    assert metadata["engine"] == "duckdb"
    rest = reader.read_all()
    assert chunk.data.num_rows + rest.num_rows == 200_000


def test_server_streams_many_batches(server: ServerHandle) -> None:
    reader = server.client.do_get(flight.Ticket(json.dumps({"sql": "SELECT * FROM cdx_records"}).encode()))
    batches = [chunk.data for chunk in reader]
    assert len(batches) > 1
    assert sum(b.num_rows for b in batches) == 200_000


def _messages(reader: flight.FlightStreamReader) -> tuple[list[tuple[int, pa.RecordBatch]], dict[str, object]]:
    """Each message as received: its size (IPC header and body, plus app_metadata) and batch; the metadata."""
    messages, metadata = [], {}
    for chunk in reader:
        extra = 0
        if chunk.app_metadata is not None:
            extra = chunk.app_metadata.size
            metadata = json.loads(chunk.app_metadata.to_pybytes())
        messages.append((pa.ipc.get_record_batch_size(chunk.data) + extra, chunk.data))
    return messages, metadata


def test_server_no_message_exceeds_the_bound_fresh_cached_streamed_or_dataset(server: ServerHandle) -> None:
    # the engine's batches of this table are 122,880 rows, about 18 MB each
    bound = server.app.settings.max_message_bytes
    assert bound <= 4 * 1024 * 1024
    everything = {"sql": "SELECT * FROM cdx_records"}
    results = {}
    for label, command, cache in (
        ("fresh", {**everything, "cache": "refresh"}, "miss"),
        ("cache hit", everything, "hit-l1"),
        ("live reader", {**everything, "cache": "bypass"}, "bypass"),
        ("dataset", {"dataset": "cdx_records", "cache": "refresh"}, "miss"),
    ):
        messages, metadata = _messages(server.client.do_get(flight.Ticket(json.dumps(command).encode())))
        assert metadata["cache"] == cache, label
        largest = max(size for size, _ in messages)
        assert largest <= bound, f"{label}: a message of {largest:,} bytes"
        results[label] = pa.Table.from_batches([batch for _, batch in messages])
        assert len(messages) > 2 and results[label].num_rows == 200_000, label
    assert results["cache hit"].equals(results["fresh"])
    assert results["live reader"].sort_by("id").equals(results["fresh"].sort_by("id"))


def test_server_a_row_larger_than_the_bound_travels_alone(tmp_path: Path) -> None:
    bound = 64 * 1024
    handle = start_server(tmp_path, max_message_bytes=bound)
    try:
        sql = "SELECT i, CASE WHEN i = 5000 THEN repeat('x', 300000) ELSE 'y' END AS s FROM range(20000) t(i)"
        messages, _ = _messages(handle.client.do_get(flight.Ticket(json.dumps({"sql": sql}).encode())))
        table = pa.Table.from_batches([batch for _, batch in messages])
        assert table.column("i").to_pylist() == list(range(20_000))
        over = [batch for size, batch in messages if size > bound]
        assert [batch.to_pylist()[0]["i"] for batch in over] == [5000]  # the wide row, alone in its message
        assert over[0].num_rows == 1 and len(messages) > 3
    finally:
        stop_server(handle)


def test_server_empty_result_keeps_schema(server: ServerHandle) -> None:
    table = server.get({"sql": "SELECT id, unix_timestamp FROM cdx_records WHERE false"})
    assert table.num_rows == 0
    assert table.schema.names == ["id", "unix_timestamp"]
    assert table.schema.field("unix_timestamp").type == pa.int64()


def test_server_get_schema_does_not_run_the_query(server: ServerHandle) -> None:
    # a query that would run for hours: the schema still comes back at once
    result = server.client.get_schema(_descriptor({"sql": "SELECT count(*) AS n FROM range(1000000000000)"}))
    assert result.schema.names == ["n"]
    assert server.action("health")["active_queries"] == []


def test_server_dataset_path_descriptor(server: ServerHandle) -> None:
    info = server.client.get_flight_info(flight.FlightDescriptor.for_path("performance_metrics"))
    table = server.client.do_get(info.endpoints[0].ticket).read_all()
    assert table.num_rows > 0
    assert "metric_type" in table.schema.names


def test_server_list_flights_lists_catalogue_and_datasets(server: ServerHandle) -> None:
    infos = list(server.client.list_flights())
    kinds: dict[str, dict[str, object]] = {}
    for info in infos:
        metadata = json.loads(info.app_metadata)
        kinds[metadata["name"]] = metadata
    assert kinds["domains.timeline"]["kind"] == "query"
    params = {p["name"]: p for p in kinds["domains.timeline"]["params"]}  # type: ignore[union-attr]
    assert params["domain"]["required"] is True
    assert params["domain"]["type"] == "string"
    assert kinds["cdx_records"]["kind"] == "dataset"
    assert kinds["cdx_records"]["rows"] == 200_000
    assert len([m for m in kinds.values() if m["kind"] == "query"]) == len(server.app.catalog)


def test_server_list_actions_describes_each(server: ServerHandle) -> None:
    actions = {a.type: a.description for a in server.client.list_actions()}
    assert {"health", "explain"} <= set(actions)
    assert all(actions.values())


def test_server_explain_shows_route_and_final_sql(server: ServerHandle) -> None:
    result = server.action("explain", {"query": "domains.statistics", "params": {"domain": "example.com"}})
    assert result["engine"] == "duckdb"
    assert "cdx_records" in result["sql"]
    assert result["params"] == {"domain": "example.com"}
    assert "SCAN" in result["engine_plan"].upper()


def test_server_health_reports_engine(server: ServerHandle) -> None:
    health = server.action("health")
    assert health["status"] in ("ok", "degraded")
    assert health["engines"]["duckdb"]["status"] == "ok"
    assert health["named_queries"] == len(server.app.catalog)


# -- bad input: each answered with the right status, and the server keeps serving ------


def _assert_serving(server: ServerHandle) -> None:
    assert server.get({"sql": "SELECT 42 AS answer"}).column("answer")[0].as_py() == 42


def test_server_unknown_named_query_is_not_found_with_hint(server: ServerHandle) -> None:
    with pytest.raises(pa.ArrowKeyError, match=r"domains\.top"):
        server.run({"query": "domains.tpo"})
    _assert_serving(server)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({}, "domain"),
        ({"domain": 5}, "domain"),
        ({"domain": "example.com", "interval": "fortnight"}, "interval"),
        ({"domain": "example.com", "bogus": 1}, "bogus"),
    ],
)
def test_server_bad_parameter_is_invalid_argument_naming_it(
    server: ServerHandle, params: dict[str, object], named: str
) -> None:
    with pytest.raises(pa.ArrowInvalid, match=named):
        server.run({"query": "domains.timeline", "params": params})
    _assert_serving(server)


def test_server_syntax_error_gives_engine_message_line(server: ServerHandle) -> None:
    with pytest.raises(pa.ArrowInvalid, match=r"syntax error at or near \"selec\"") as caught:
        server.get({"sql": "selec 1"})
    assert "Traceback" not in str(caught.value)
    _assert_serving(server)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "must be JSON"),
        (b"[1,2]", "must be a JSON object"),
        (b'{"query": 1}', "'query' must be a non-empty string"),
        (b'{"sql": "select 1", "query": "x"}', "exactly one of 'query'"),
        (b'{"sql": "select 1", "cache": "maybe"}', "'cache' must be one of"),
        (b"\xff\xfe", "must be JSON"),
        # deeper than the JSON decoder's own recursion, and deep but decodable
        (b'{"sql": "SELECT 1", "params": [' + _nested(5000) + b"]}", "deeper than 32 levels"),
        (b'{"sql": "SELECT 1", "params": [' + _nested(200) + b"]}", "deeper than 32 levels"),
        (b'{"sql": "SELECT 1", "max_staleness_s": NaN}', "'max_staleness_s' must be a finite"),
        (b'{"sql": "SELECT 1", "max_staleness_s": -Infinity}', "'max_staleness_s' must be a finite"),
    ],
)
def test_server_malformed_ticket_is_invalid_argument(server: ServerHandle, raw: bytes, reason: str) -> None:
    with pytest.raises(pa.ArrowInvalid, match=reason):
        server.client.do_get(flight.Ticket(raw)).read_all()
    with pytest.raises(pa.ArrowInvalid, match=reason):
        server.client.get_flight_info(flight.FlightDescriptor.for_command(raw))
    _assert_serving(server)


@pytest.mark.parametrize(
    ("name", "body", "reason"),
    [
        ("explain", b'{"sql": "SELECT 1", "params": [' + _nested(5000) + b"]}", "a command nests"),
        ("cache.invalidate", b'{"tables": ' + _nested(3000) + b"}", "the action body nests"),
        ("query.cancel", b'{"query_id": ' + _nested(100) + b"}", "the action body nests"),
        ("cache.invalidate", b"{oops", "the action body must be JSON"),
    ],
)
def test_server_malformed_action_body_is_invalid_argument(
    server: ServerHandle, name: str, body: bytes, reason: str
) -> None:
    with pytest.raises(pa.ArrowInvalid, match=reason):
        list(server.client.do_action(flight.Action(name, body)))
    _assert_serving(server)


_READ_ONLY = r"only read-only queries .* are allowed; got "


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("INSERT INTO cdx_records (id) VALUES ('x')", _READ_ONLY + "INSERT"),
        ("CREATE TABLE evil AS SELECT 1", _READ_ONLY + "CREATE"),
        ("DROP TABLE cdx_records", _READ_ONLY + "DROP"),
        ("SELECT * FROM read_csv('/etc/passwd')", r"function read_csv\(\) is not allowed"),
        ("SELECT * FROM '/etc/passwd'", "unknown table"),
        ("COPY (SELECT 1) TO '{tmp}/x.csv'", _READ_ONLY + "COPY"),
        ("ATTACH '{tmp}/x.db'", _READ_ONLY + "ATTACH"),
        ("INSTALL httpfs", _READ_ONLY + "INSTALL"),
        ("LOAD httpfs", _READ_ONLY),
        ("SET threads=1", _READ_ONLY + "SET"),
        ("SELECT 1; SELECT 2", "exactly one SQL statement"),
        ("PRAGMA version", _READ_ONLY + "PRAGMA"),
        ("SELECT * FROM glob('{tmp}/*')", r"function glob\(\) is not allowed"),
        ("SELECT getenv('HOME')", r"function getenv\(\) is not allowed"),
        ("SELECT * FROM duckdb_settings()", r"table function duckdb_settings\(\) is not allowed"),
        ("SELECT * FROM information_schema.tables", "information_schema.tables is not in any engine"),
    ],
)
def test_server_rejects_writes_and_external_access(server: ServerHandle, tmp_path: Path, sql: str, reason: str) -> None:
    with pytest.raises(pa.ArrowInvalid, match=reason):
        server.get({"sql": sql.format(tmp=tmp_path)})
    assert list(tmp_path.iterdir()) == []
    assert server.get({"sql": "SELECT count(*) AS n FROM cdx_records"}).column("n")[0].as_py() == 200_000
    names = set(server.app.duckdb.refresh_tables())
    assert names == {"cdx_records", "content_analytics", "performance_metrics"}


@pytest.mark.parametrize("value", ["x' OR '1'='1", "example.com'; DROP TABLE cdx_records; --", "\\' OR 1=1 --"])
def test_server_parameter_values_are_data(server: ServerHandle, value: str) -> None:
    named = server.run({"query": "domains.statistics", "params": {"domain": value}})
    assert named.column("total_captures")[0].as_py() in (0, None)
    raw = server.get({"sql": "SELECT count(*) AS n FROM cdx_records WHERE domain = $1", "params": [value]})
    assert raw.column("n")[0].as_py() == 0
    _assert_serving(server)


def test_server_locked_engine_refuses_even_past_the_guard(server: ServerHandle, tmp_path: Path) -> None:
    # the second wall: DuckDB itself, reached without the SQL check
    cursor = server.app.duckdb._db.cursor()
    for sql in (
        f"COPY (SELECT 1) TO '{tmp_path}/x.csv'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SET threads = 1",
        "INSTALL httpfs",
    ):
        with pytest.raises(Exception, match=r"(?i)disabled|locked|permission|cannot"):
            cursor.execute(sql)
    cursor.close()
    assert list(tmp_path.iterdir()) == []


# -- deadlines and cancellation: servers of their own ------------------------------------


@pytest.fixture
def short_deadline_server(tmp_path: Path) -> ServerHandle:
    handle = start_server(tmp_path / "data", rows=0, query_deadline_s=0.5)
    yield handle  # type: ignore[misc]
    stop_server(handle)


def test_server_query_past_deadline_is_timed_out(short_deadline_server: ServerHandle) -> None:
    with pytest.raises(flight.FlightTimedOutError, match="deadline"):
        short_deadline_server.get({"sql": "SELECT count(*) FROM range(1000000000000) a"})
    assert short_deadline_server.get({"sql": "SELECT 1 AS one"}).num_rows == 1
    assert short_deadline_server.action("health")["active_queries"] == []


def test_server_deadline_while_streaming_is_timed_out(short_deadline_server: ServerHandle) -> None:
    # batches flow at once; the deadline fires while the result is streaming
    command = {"sql": "SELECT * FROM range(100000000000) a", "cache": "bypass"}
    reader = short_deadline_server.client.do_get(flight.Ticket(json.dumps(command).encode()))
    assert reader.read_chunk().data.num_rows > 0
    with pytest.raises(flight.FlightTimedOutError, match="exceeded its deadline"):
        reader.read_all()
    assert short_deadline_server.get({"sql": "SELECT 1 AS one"}).num_rows == 1


def test_server_client_cancel_stops_the_work(short_deadline_server: ServerHandle) -> None:
    handle = short_deadline_server
    # a stream far longer than the test: only a cancel can end it before the deadline
    reader = handle.client.do_get(flight.Ticket(json.dumps({"sql": "SELECT * FROM range(100000000000) a"}).encode()))
    reader.read_chunk()
    assert len(handle.action("health")["active_queries"]) == 1
    reader.cancel()
    wait_for(lambda: not handle.action("health")["active_queries"], 30, "the cancelled query kept running")
    assert handle.get({"sql": "SELECT 1 AS one"}).num_rows == 1


def test_server_cancel_action_interrupts_a_running_query(tmp_path: Path) -> None:
    handle = start_server(tmp_path / "data", rows=0, query_deadline_s=600)
    try:
        import threading

        errors: list[BaseException] = []

        def run() -> None:
            try:
                handle.get({"sql": "SELECT count(*) FROM range(1000000000000) a"})
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        active = wait_for(lambda: handle.action("health")["active_queries"], 30, "the query never started")
        assert handle.action("query.cancel", {"query_id": active[0]["query_id"]})["cancelled"]
        worker.join(timeout=30)
        assert errors and isinstance(errors[0], flight.FlightCancelledError)
        assert handle.get({"sql": "SELECT 1 AS one"}).num_rows == 1
    finally:
        stop_server(handle)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(max_size=60))
def test_server_any_text_parameter_round_trips_as_data(server: ServerHandle, value: str) -> None:
    table = server.get({"sql": "SELECT $1::VARCHAR AS v, length($1::VARCHAR) AS n", "params": [value]})
    assert table.column("v")[0].as_py() == value
    assert table.column("n")[0].as_py() == len(value)


def test_server_concurrent_requests_each_get_their_own_answer(server: ServerHandle) -> None:
    domains = [r["domain"] for r in server.run({"query": "domains.top", "params": {"limit": 16}}).to_pylist()]
    expected = {
        d: server.get({"sql": "SELECT count(*) AS n FROM cdx_records WHERE domain = $1", "params": [d]})
        .column("n")[0]
        .as_py()
        for d in domains
    }

    def count(domain: str) -> tuple[str, int]:
        client = flight.connect(server.location)
        try:
            command = {"query": "domains.statistics", "params": {"domain": domain}}
            table = client.do_get(flight.Ticket(json.dumps(command).encode())).read_all()
            return domain, table.column("total_captures")[0].as_py()
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(pool.map(count, domains * 4))
    assert results == expected
