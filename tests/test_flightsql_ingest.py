"""Flight SQL bulk ingest (`adbc_ingest`) through the server's ingestion path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import adbc_driver_manager
import pyarrow as pa
import pytest

from flight_server.flightsql import flight_sql_pb2 as sql
from flight_server.settings import CacheSettings, IngestSettings

from support.flightsql import connect, descriptor
from support.servers import ServerHandle, start_server, stop_server

MAX_ROWS = 1_000


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(
        tmp_path_factory.mktemp("ingest"),
        rows=5_000,
        cache=CacheSettings(warm_top_n=0),
        ingest=IngestSettings(max_put_rows=MAX_ROWS),
    )
    yield handle
    stop_server(handle)


@pytest.fixture
def conn(target: ServerHandle) -> Iterator[Any]:
    with connect(target) as connection:
        yield connection


def _read(conn: Any, query: str) -> pa.Table:
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetch_arrow_table()


def test_flightsql_ingest_create_then_query(conn: Any) -> None:
    data = pa.table({"id": [1, 2, 3], "name": ["a", "b", "c"]})
    with conn.cursor() as cur:
        assert cur.adbc_ingest("sql_people", data, mode="create") == 3
    assert _read(conn, "SELECT id, name FROM sql_people ORDER BY id").equals(data)


def test_flightsql_ingest_create_of_an_existing_table_fails(conn: Any) -> None:
    data = pa.table({"id": [1]})
    with conn.cursor() as cur:
        cur.adbc_ingest("sql_twice", data, mode="create")
        with pytest.raises(adbc_driver_manager.Error, match="already exists"):
            cur.adbc_ingest("sql_twice", data, mode="create")


def test_flightsql_ingest_append_adds_rows(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.adbc_ingest("sql_events", pa.table({"id": [1, 2], "kind": ["x", "y"]}), mode="create")
        assert cur.adbc_ingest("sql_events", pa.table({"id": [3], "kind": ["z"]}), mode="append") == 1
    assert _read(conn, "SELECT count(*) AS n FROM sql_events").to_pylist() == [{"n": 3}]


def test_flightsql_ingest_append_to_a_missing_table_fails(conn: Any) -> None:
    with conn.cursor() as cur, pytest.raises(adbc_driver_manager.Error, match="does not exist"):
        cur.adbc_ingest("sql_missing", pa.table({"id": [1]}), mode="append")


def test_flightsql_ingest_replace_swaps_rows_and_schema(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.adbc_ingest("sql_swap", pa.table({"id": [1, 2, 3]}), mode="create")
        cur.adbc_ingest("sql_swap", pa.table({"code": ["q"], "score": [0.5]}), mode="replace")
    assert _read(conn, "SELECT * FROM sql_swap").to_pylist() == [{"code": "q", "score": 0.5}]


def test_flightsql_ingest_into_a_known_dataset_appends(conn: Any, target: ServerHandle) -> None:
    before = _read(conn, "SELECT count(*) AS n FROM performance_metrics")["n"][0].as_py()
    row = pa.table(
        {
            "metric_id": pa.array(["flightsql-1"]),
            "metric_type": ["latency"],
            "value": [1.5],
            "timestamp": pa.array([1_700_000_000_000_000], pa.timestamp("us")),
        }
    )
    with conn.cursor() as cur:
        cur.adbc_ingest("performance_metrics", row, mode="append")
    assert _read(conn, "SELECT count(*) AS n FROM performance_metrics")["n"][0].as_py() == before + 1


def test_flightsql_failed_ingest_leaves_nothing(conn: Any, target: ServerHandle) -> None:
    with conn.cursor() as cur:
        cur.adbc_ingest("sql_strict", pa.table({"id": [1], "name": ["a"]}), mode="create")
        with pytest.raises(adbc_driver_manager.Error, match="name"):
            cur.adbc_ingest("sql_strict", pa.table({"id": [2], "name": [pa.scalar(3.5)]}), mode="append")
        big = pa.table({"id": range(MAX_ROWS + 1)}).to_batches(max_chunksize=100)
        with pytest.raises(adbc_driver_manager.Error, match="nothing was stored"):
            cur.adbc_ingest("sql_never", pa.RecordBatchReader.from_batches(big[0].schema, big), mode="create")
        with pytest.raises(adbc_driver_manager.Error, match="nothing was stored"):
            cur.adbc_ingest(
                "sql_strict",
                pa.Table.from_batches(big).append_column("name", pa.nulls(MAX_ROWS + 1, pa.string())),
                mode="append",
            )
    assert _read(conn, "SELECT * FROM sql_strict").to_pylist() == [{"id": 1, "name": "a"}]
    assert "sql_never" not in target.app.datasets.names()


def test_flightsql_ingest_temporary_is_refused(target: ServerHandle) -> None:
    command = sql.CommandStatementIngest(table="sql_temp", temporary=True)
    command.table_definition_options.if_not_exist = command.TableDefinitionOptions.TABLE_NOT_EXIST_OPTION_CREATE
    writer, _ = target.client.do_put(descriptor(command), pa.schema([("id", pa.int64())]))
    with pytest.raises(pa.ArrowInvalid, match="temporary tables are not supported"):
        writer.close()
    assert "sql_temp" not in target.app.datasets.names()


def test_flightsql_ingest_answers_the_record_count(target: ServerHandle) -> None:
    command = sql.CommandStatementIngest(table="sql_counted")
    command.table_definition_options.if_not_exist = command.TableDefinitionOptions.TABLE_NOT_EXIST_OPTION_CREATE
    data = pa.table({"id": [1, 2, 3, 4]})
    writer, reader = target.client.do_put(descriptor(command), data.schema)
    writer.write_table(data)
    writer.done_writing()
    answer = reader.read()
    writer.close()
    assert sql.DoPutUpdateResult.FromString(answer.to_pybytes()).record_count == 4
