"""The typed client library and its examples against a real server with demo data."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from chrono_flight_client import (
    BatchStream,
    ChronoFlightClient,
    ChronoFlightError,
    InvalidArgument,
    NotFound,
    Options,
    QueryInfo,
    ServerError,
    Unavailable,
    query_command,
    sql_command,
)

from support.servers import ServerHandle

CLIENTS = Path(__file__).resolve().parents[1] / "clients"
EXAMPLES = ["pandas_example.py", "polars_example.py", "pyarrow_example.py"]


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> Iterator[ChronoFlightClient]:
    with ChronoFlightClient.connect(server.location, timeout=120) as c:
        yield c


def _example_count(client: ChronoFlightClient) -> int:
    table = client.sql("SELECT count(*) FILTER (WHERE domain = 'example.com') AS n FROM cdx_records")
    return int(table.column("n")[0].as_py())


def test_client_sql_with_params_returns_the_matching_rows(client: ChronoFlightClient) -> None:
    count = client.sql("SELECT count(*) AS n FROM cdx_records WHERE domain = $1", "example.com")
    assert count.column_names == ["n"]
    assert count.column("n")[0].as_py() == _example_count(client) > 0

    rows = client.sql(
        "SELECT id, domain, status_code FROM cdx_records WHERE domain = $1 AND status_code = $2",
        "example.com",
        404,
    )
    assert rows.num_rows > 0
    assert set(rows.column("domain").to_pylist()) == {"example.com"}
    assert set(rows.column("status_code").to_pylist()) == {404}


def test_client_query_with_params(client: ChronoFlightClient) -> None:
    top = client.query("domains.top", limit=3)
    assert top.num_rows == 3
    assert top.column("domain")[0].as_py() == "example.com"

    timeline = client.query("domains.timeline", domain="example.com", interval="month")
    assert timeline.column_names[:2] == ["period_start", "captures"]
    assert timeline.num_rows > 12
    assert sum(timeline.column("captures").to_pylist()) == _example_count(client)


def test_client_query_options_go_positionally_and_reach_the_server(client: ChronoFlightClient) -> None:
    assert query_command("domains.top", Options(cache="bypass", engine="duckdb"), limit=2) == {
        "query": "domains.top",
        "params": {"limit": 2},
        "engine": "duckdb",
        "cache": "bypass",
    }
    assert sql_command("SELECT $1", 1, options=Options(max_staleness_s=5)) == {
        "sql": "SELECT $1",
        "params": [1],
        "max_staleness_s": 5,
    }
    table = client.query("domains.top", Options(cache="bypass"), limit=2)
    assert table.num_rows == 2
    assert client.last_metadata["cache"] == "bypass"
    client.sql("SELECT 1 AS one", cache="refresh", engine="duckdb")
    assert client.last_metadata["cache"] in ("miss", "bypass")


def test_client_query_takes_the_options_as_keywords_like_sql(client: ChronoFlightClient) -> None:
    assert query_command("domains.top", cache="bypass", engine="duckdb", limit=2) == {
        "query": "domains.top",
        "params": {"limit": 2},
        "engine": "duckdb",
        "cache": "bypass",
    }
    client.query("domains.top", limit=2)  # cached now
    table = client.query("domains.top", cache="bypass", limit=2)
    assert table.num_rows == 2
    assert client.last_metadata["cache"] == "bypass"
    assert sum(b.num_rows for b in client.stream_query("domains.top", cache="refresh", limit=3)) == 3
    assert client.last_metadata["cache"] == "miss"
    assert client.query("domains.top", Options(engine="duckdb"), cache="bypass", limit=1).num_rows == 1
    with pytest.raises(InvalidArgument, match="option 'cache' given twice"):
        client.query("domains.top", Options(cache="use"), cache="bypass", limit=1)


def test_client_option_names_cannot_be_named_query_parameters(tmp_path: Path) -> None:
    from flight_server.catalog import load_catalog

    entry = (
        '[[query]]\nname = "t.x"\ndescription = "d"\ntables = ["cdx_records"]\n'
        'sql = "SELECT * FROM cdx_records WHERE domain = $cache"\n'
        '[[query.params]]\nname = "cache"\ntype = "string"\ndescription = "d"\n'
    )
    (tmp_path / "catalog.toml").write_text(entry)
    with pytest.raises(ValueError, match="parameter name 'cache' is reserved"):
        load_catalog(tmp_path / "catalog.toml")


def test_client_last_metadata_has_cache_and_query_id(client: ChronoFlightClient) -> None:
    client.query("domains.top", limit=4)
    first = client.last_metadata
    assert first["cache"] in ("miss", "hit-l1", "hit-l2", "bypass")
    assert isinstance(first["query_id"], str) and len(first["query_id"]) >= 8
    client.query("domains.top", limit=4)
    assert client.last_metadata["query_id"] != first["query_id"]
    assert client.last_metadata is not client.last_metadata  # a copy each time


def test_client_stream_yields_several_batches_matching_read_all(
    client: ChronoFlightClient, server: ServerHandle
) -> None:
    sql = "SELECT id, domain, unix_timestamp FROM cdx_records ORDER BY id"
    stream = client.stream_sql(sql)
    assert isinstance(stream, BatchStream)
    assert stream.schema.names == ["id", "domain", "unix_timestamp"]
    batches = list(stream)
    assert len(batches) > 1
    assert all(isinstance(b, pa.RecordBatch) for b in batches)
    assert client.last_metadata["query_id"]
    streamed = pa.Table.from_batches(batches)
    assert streamed.num_rows == 200_000

    reference = server.get({"sql": sql})
    assert streamed.equals(reference)
    assert client.sql(sql).equals(reference)

    whole = list(client.stream_sql("SELECT * FROM cdx_records"))
    assert len(whole) > 1
    everything = pa.Table.from_batches(whole)
    assert everything.num_rows == 200_000
    direct = server.client.do_get(flight.Ticket(b'{"sql": "SELECT * FROM cdx_records"}')).read_all()
    assert everything.sort_by("id").equals(direct.sort_by("id"))


def test_client_stream_of_a_whole_table_and_early_close(client: ChronoFlightClient) -> None:
    with client.stream_sql("SELECT * FROM cdx_records") as stream:
        first = next(stream)
        assert first.num_rows > 0
        assert first.schema.equals(stream.schema)
        assert stream.metadata["cache"]
    with pytest.raises(StopIteration):
        next(stream)  # closed: the rest is cancelled, not read
    batches = list(client.stream_query("domains.top", limit=5))
    assert sum(b.num_rows for b in batches) == 5
    assert client.query("domains.top", limit=1).num_rows == 1  # the connection is still good


def test_client_info_and_schema_do_not_run_the_query(client: ChronoFlightClient) -> None:
    command = query_command("domains.timeline", domain="example.com", interval="year")
    info = client.info(command)
    assert isinstance(info, QueryInfo)
    assert info.engine == "duckdb"
    assert info.reason and info.query_id and info.cache
    assert json.loads(info.ticket)["query"] == "domains.timeline"
    table = client.query("domains.timeline", domain="example.com", interval="year")
    assert info.schema.equals(table.schema)
    assert client.schema(command).equals(table.schema)
    assert client.schema(sql_command("SELECT 1 AS one, 'x' AS two")).names == ["one", "two"]


def test_client_catalog_lists_named_queries_with_params(client: ChronoFlightClient) -> None:
    catalog = {entry["name"]: entry for entry in client.catalog()}
    assert {"domains.timeline", "domains.top"} <= set(catalog)
    timeline = catalog["domains.timeline"]
    assert timeline["kind"] == "query"
    params = {p["name"]: p for p in timeline["params"]}
    assert params["domain"]["required"] is True
    assert params["interval"]["required"] is False
    assert "month" in params["interval"].get("choices", ["month"])
    assert isinstance(timeline["schema"], pa.Schema)
    assert "captures" in timeline["schema"].names

    datasets = {entry["name"]: entry for entry in client.datasets()}
    assert {"cdx_records", "content_analytics", "performance_metrics"} <= set(datasets)
    assert datasets["cdx_records"]["rows"] == 200_000


def test_client_health_and_explain(client: ChronoFlightClient) -> None:
    health = client.health()
    assert isinstance(health, dict)
    assert health["status"] in ("ok", "degraded")

    plan = client.explain(query_command("domains.top", limit=3))
    assert plan["engine"] == "duckdb"
    assert "cdx_records" in plan["sql"]
    raw = client.explain(sql_command("SELECT count(*) FROM cdx_records WHERE domain = $1", "example.com"))
    assert "cdx_records" in raw["sql"]


def _assert_clean(error: ChronoFlightError) -> None:
    assert error.message == str(error)
    assert error.message
    assert "Detail:" not in error.message
    assert "\n" not in error.message
    assert "gRPC" not in error.message
    assert isinstance(error.__cause__, pa.ArrowException)


def test_client_unknown_query_is_not_found_with_a_hint(client: ChronoFlightClient) -> None:
    with pytest.raises(NotFound) as caught:
        client.query("domains.topp")
    _assert_clean(caught.value)
    assert caught.value.status == "not_found"
    assert "domains.topp" in caught.value.message
    assert "domains.top" in caught.value.message.split("domains.topp", 1)[1]  # did you mean ...
    with pytest.raises(NotFound):
        client.info(query_command("no.such.query"))
    with pytest.raises(NotFound):
        client.action("no.such.action")


def test_client_bad_sql_is_invalid_argument(client: ChronoFlightClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.sql("SELEC 1")
    _assert_clean(caught.value)
    assert caught.value.status == "invalid_argument"
    assert isinstance(caught.value.__cause__, pa.ArrowInvalid)
    with pytest.raises(InvalidArgument):
        client.stream_sql("SELECT * FROM no_such_table")  # raised on the call, not on iteration
    with pytest.raises(InvalidArgument):
        client.query("domains.timeline", domain="example.com", interval="fortnight")
    with pytest.raises(InvalidArgument):
        client.schema({"sql": "SELECT 1", "bogus": True})
    with pytest.raises(ChronoFlightError):
        client.explain({})


def test_client_unreachable_server_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        ChronoFlightClient.connect(f"grpc://127.0.0.1:{port}", timeout=5) as dead,
        pytest.raises(Unavailable) as caught,
    ):
        dead.health()
    _assert_clean(caught.value)
    with pytest.raises(InvalidArgument):
        ChronoFlightClient.connect("http://127.0.0.1:8815")


def test_client_token_travels_as_bearer_header(server: ServerHandle) -> None:
    with ChronoFlightClient.connect(server.location, "secret-token") as c:
        assert c._options.headers == [(b"authorization", b"Bearer secret-token")]
        assert c.query("domains.top", limit=1).num_rows == 1  # no auth configured: accepted


def test_client_error_translation_of_transport_messages() -> None:
    from chrono_flight_client import ResourceExhausted, _translate

    wire = "RESOURCE_EXHAUSTED: too many queries. Detail: Python exception: X\n. gRPC client debug context: y"
    exhausted = _translate(flight.FlightServerError(wire))
    assert isinstance(exhausted, ResourceExhausted)
    assert exhausted.message == "too many queries"
    internal = _translate(flight.FlightInternalError("internal error; the server logged the details"))
    assert isinstance(internal, ServerError) and internal.status == "internal"


def test_client_results_convert_to_pandas_and_polars(client: ChronoFlightClient) -> None:
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    top = client.query("domains.top", limit=5)
    frame = top.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert frame["domain"].iloc[0] == "example.com"
    assert len(frame) == 5
    polars_frame = pl.from_arrow(top)
    assert isinstance(polars_frame, pl.DataFrame)
    assert polars_frame["domain"][0] == "example.com"
    streamed = pl.concat([pl.from_arrow(b) for b in client.stream_sql("SELECT domain FROM cdx_records")])
    assert isinstance(streamed, pl.DataFrame)
    assert streamed.height == 200_000


@pytest.mark.parametrize("script", EXAMPLES)
def test_client_example_scripts_run(server: ServerHandle, script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(CLIENTS / "examples" / script), server.location],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "example.com" in done.stdout
