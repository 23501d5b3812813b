"""DoPut faults: bad input, limits, clients and servers killed midway. Nothing half visible."""

from __future__ import annotations

import json
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from chrono_flight_client import (
    ChronoFlightClient,
    ChronoFlightError,
    InvalidArgument,
    ResourceExhausted,
)
from flight_server.ingest.datasets import MANIFEST
from flight_server.settings import IngestSettings

from support.ingest import MAY_2024, cdx_rows, count, put
from support.processes import ServerProcess
from support.servers import ServerHandle, start_server, stop_server
from support.waiting import wait_for


def leftovers(data_dir: Path) -> list[Path]:
    """Every data or temporary file under the datasets directory that no manifest lists."""
    root = data_dir / "datasets"
    committed = set()
    for manifest in root.glob(f"*/{MANIFEST}"):
        committed |= {manifest.parent / f["path"] for f in json.loads(manifest.read_text())["files"]}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST and p not in committed)


def put_statuses(handle: ServerHandle) -> int:
    return int(handle.app.stats.snapshot()["by_rpc"].get("DoPut", 0))


@pytest.fixture(scope="module")
def empty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """No demo data: every visible row of a dataset came from a put."""
    handle = start_server(tmp_path_factory.mktemp("faults"))
    yield handle
    stop_server(handle)


@pytest.fixture(scope="module")
def client(empty_server: ServerHandle) -> Iterator[ChronoFlightClient]:
    with ChronoFlightClient.connect(empty_server.location, timeout=60) as c:
        yield c


def assert_nothing_stored(handle: ServerHandle, dataset: str = "cdx_records", domain: str | None = None) -> None:
    where = f"WHERE domain = '{domain}'" if domain else ""
    assert count(handle, f"SELECT count(*) FROM {dataset} {where}") == 0
    assert leftovers(handle.data_dir) == []


@pytest.mark.parametrize(
    ("column", "values", "words"),
    [
        ("unix_timestamp", pa.array([str(MAY_2024)]), "'unix_timestamp' is string"),
        ("domain", pa.array([42]), "'domain' is int64"),
        ("status_code", pa.array([200], pa.int64()), "'status_code' is int64"),
        ("status_code", pa.array([200.0]), "'status_code' is double"),
        ("created_at", pa.array(["2024-05-01"]), "'created_at' is string"),
    ],
)
def test_ingest_rejects_wrong_types(
    empty_server: ServerHandle, client: ChronoFlightClient, column: str, values: pa.Array, words: str
) -> None:
    rows = cdx_rows("types.example", 1)
    if column in rows.column_names:
        rows = rows.set_column(rows.schema.get_field_index(column), column, values)
    else:
        rows = rows.append_column(column, values)
    with pytest.raises(InvalidArgument, match=re.escape(words)) as error:
        client.ingest("cdx_records", rows)
    assert "\n" not in error.value.message and "Traceback" not in error.value.message
    assert_nothing_stored(empty_server, domain="types.example")


@pytest.mark.parametrize(
    ("dataset", "drop"),
    [
        ("cdx_records", "id"),
        ("cdx_records", "unix_timestamp"),
        ("content_analytics", "date_captured"),
        ("performance_metrics", "value"),
    ],
)
def test_ingest_rejects_a_missing_required_column(
    empty_server: ServerHandle, client: ChronoFlightClient, dataset: str, drop: str
) -> None:
    tables = {
        "cdx_records": cdx_rows("missing.example", 2),
        "content_analytics": pa.table({"page_id": ["p"], "date_captured": pa.array([MAY_2024 // 86_400], pa.date32())}),
        "performance_metrics": pa.table(
            {
                "metric_id": ["m"],
                "metric_type": ["t"],
                "value": [1.0],
                "timestamp": pa.array([MAY_2024], pa.timestamp("s")),
            }
        ),
    }
    rows = tables[dataset]
    rows = rows.drop_columns([drop])
    with pytest.raises(InvalidArgument, match=f"required column '{drop}' is missing"):
        client.ingest(dataset, rows)
    assert_nothing_stored(empty_server, dataset, "missing.example" if dataset == "cdx_records" else None)


def test_ingest_rejects_nulls_in_a_later_batch_and_stores_nothing(
    empty_server: ServerHandle, client: ChronoFlightClient
) -> None:
    good = cdx_rows("nulls.example", 1_000)
    bad = good.slice(0, 10).set_column(0, "id", pa.array([None] * 10, pa.string()))
    with pytest.raises(InvalidArgument, match="'id' is required but has 10 nulls"):
        client.ingest("cdx_records", pa.concat_tables([good, bad]), batch_rows=250)
    assert_nothing_stored(empty_server, domain="nulls.example")
    assert client.ingest("cdx_records", good.slice(0, 3))["rows"] == 3  # the next put succeeds
    put(empty_server, "cdx_records", cdx_rows("nulls.example", 0))  # and an empty one
    assert count(empty_server, "SELECT count(*) FROM cdx_records WHERE domain = 'nulls.example'") == 3


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "a\x00b", "x" * 200, "Upper", "1abc", "", "select"])
def test_ingest_rejects_bad_dataset_names(empty_server: ServerHandle, client: ChronoFlightClient, name: str) -> None:
    before = sorted(p.name for p in (empty_server.data_dir / "datasets").iterdir())
    with pytest.raises(InvalidArgument) as error:
        client.ingest(name, pa.table({"a": [1]}))
    assert "\n" not in error.value.message
    assert sorted(p.name for p in (empty_server.data_dir / "datasets").iterdir()) == before
    assert not (empty_server.data_dir.parent / "x").exists() and not Path("/abs").exists()


@pytest.mark.parametrize(
    "name", ["sqlite_master", "pg_settings", "duckdb_tables", "pg_class", "pragma_database_list", "range", "pg_new_one"]
)
def test_ingest_rejects_names_that_shadow_system_views(
    empty_server: ServerHandle, client: ChronoFlightClient, name: str
) -> None:
    with pytest.raises(InvalidArgument, match=f"'{name}' is the name of a system view or table function"):
        client.ingest(name, pa.table({"a": [1]}))
    assert not (empty_server.data_dir / "datasets" / name).exists()
    assert name not in empty_server.app.registry.tables()


def test_ingest_does_not_serve_a_stored_dataset_named_like_a_system_view(tmp_path: Path) -> None:
    handle = start_server(tmp_path)
    try:
        put(handle, "plain_events", pa.table({"a": [1, 2]}))
    finally:
        stop_server(handle)
    # what an older server could have stored under a name that shadows DuckDB's sqlite_master
    (tmp_path / "datasets" / "plain_events").rename(tmp_path / "datasets" / "sqlite_master")
    handle = start_server(tmp_path)
    try:
        listed = {info.descriptor.path[0].decode() for info in handle.client.list_flights() if info.descriptor.path}
        assert "sqlite_master" not in listed
        with pytest.raises(pa.ArrowInvalid, match="unknown table 'sqlite_master'"):
            handle.get({"sql": "SELECT * FROM sqlite_master"})
    finally:
        stop_server(handle)


def test_ingest_rejects_descriptors_that_name_no_single_dataset(empty_server: ServerHandle) -> None:
    rows = pa.table({"a": [1]})
    for descriptor in (
        flight.FlightDescriptor.for_path("a", "b"),
        flight.FlightDescriptor.for_command(b'{"sql": "SELECT 1"}'),
    ):
        writer, _ = empty_server.client.do_put(descriptor, rows.schema)
        with pytest.raises(pa.ArrowInvalid, match="for_path"):
            writer.write_table(rows)
            writer.close()


class PickledType(pa.ExtensionType):
    """An extension type whose parameters travel as a pickle: never to be trusted."""

    deserialized = 0

    def __init__(self, options: Any = None) -> None:
        self.options = options or {"unit": "m"}
        super().__init__(pa.int64(), "test.pickled")

    def __arrow_ext_serialize__(self) -> bytes:
        return pickle.dumps(self.options)

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> PickledType:
        cls.deserialized += 1
        return PickledType(pickle.loads(serialized))  # the hazard under test


def test_ingest_rejects_a_pickle_based_extension_type(empty_server: ServerHandle, client: ChronoFlightClient) -> None:
    pa.register_extension_type(PickledType())
    try:
        storage = pa.array([1, 2], pa.int64())
        rows = pa.table({"k": pa.ExtensionArray.from_storage(PickledType(), storage)})
        with pytest.raises(InvalidArgument, match=r"extension type 'test\.pickled'"):
            client.ingest("pickled_things", rows)
    finally:
        pa.unregister_extension_type("test.pickled")
    # unregistered on the server side it arrives as storage plus metadata: refused all the same
    field = pa.field("k", pa.int64(), metadata={b"ARROW:extension:name": b"test.pickled"})
    with pytest.raises(InvalidArgument, match="extension type"):
        client.ingest("pickled_things", pa.table({"k": [1]}, schema=pa.schema([field])))
    assert not (empty_server.data_dir / "datasets" / "pickled_things").exists()


def test_ingest_rejects_uploads_over_the_limits(tmp_path: Path) -> None:
    limits = IngestSettings(max_put_rows=1_000, max_put_bytes=100_000, max_columns=14, max_nesting_depth=2)
    handle = start_server(tmp_path, ingest=limits)
    try:
        with ChronoFlightClient.connect(handle.location) as client:
            with pytest.raises(ResourceExhausted, match="more than 1,000 rows"):
                client.ingest("cdx_records", cdx_rows("rows.example", 1_500), batch_rows=500)
            assert_nothing_stored(handle)
            wide = cdx_rows("bytes.example", 900).append_column("blob", pa.array(["x" * 200] * 900))
            with pytest.raises(ResourceExhausted, match="more than 100,000 Arrow bytes"):
                client.ingest("cdx_records", wide, batch_rows=100)
            assert_nothing_stored(handle)
            too_wide = pa.table({f"c{i}": [i] for i in range(15)})
            with pytest.raises(InvalidArgument, match="15 columns; the limit is 14"):
                client.ingest("too_wide", too_wide)
            # a struct is stored as a column per field: 15 fields in one column are 15 columns
            fields = pa.StructArray.from_arrays([pa.array([i]) for i in range(15)], [f"f{i}" for i in range(15)])
            with pytest.raises(InvalidArgument, match="15 columns; the limit is 14"):
                client.ingest("too_wide_nested", pa.table({"s": fields}))
            deep = pa.table({"d": pa.array([[[[1]]]], pa.list_(pa.list_(pa.list_(pa.int8()))))})
            with pytest.raises(InvalidArgument, match="nests deeper than 2"):
                client.ingest("too_deep", deep)
            for odd in (
                pa.array([1.5], pa.float32()).cast(pa.float16()),
                pa.array([1], pa.duration("s")),
                pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval()),
            ):
                with pytest.raises(InvalidArgument, match="which datasets do not store"):
                    client.ingest("odd_types", pa.table({"o": odd}))
            assert client.ingest("cdx_records", cdx_rows("fine.example", 10))["rows"] == 10
        assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == ["cdx_records"]
    finally:
        stop_server(handle)


# -- clients that go away ----------------------------------------------------------------------

_SLOW_CLIENT = textwrap.dedent(
    """
    import sys, threading
    import pyarrow as pa, pyarrow.flight as flight
    from chrono_flight_client import ChronoFlightClient
    rows = pa.table({{"id": [f"k-{{i}}" for i in range(2000)], "domain": ["killed.example"] * 2000,
                      "original_url": ["u"] * 2000, "unix_timestamp": pa.array([{start}] * 2000, pa.int64())}})

    def batches():
        for _ in range(4):
            yield from rows.to_batches()
        print("sent", flush=True)
        threading.Event().wait()  # the upload stays open until the test kills this process
        yield from rows.to_batches()

    if sys.argv[1] == "client":
        reader = pa.RecordBatchReader.from_batches(rows.schema, batches())
        ChronoFlightClient.connect(sys.argv[2]).ingest("cdx_records", reader)
    else:
        writer, _ = flight.connect(sys.argv[2]).do_put(flight.FlightDescriptor.for_path("cdx_records"), rows.schema)
        for batch in batches():
            writer.write_batch(batch)
    """
).format(start=MAY_2024)


@pytest.mark.parametrize("kind", ["pyarrow", "client"])
def test_ingest_client_killed_mid_upload_stores_nothing(empty_server: ServerHandle, kind: str) -> None:
    puts = put_statuses(empty_server)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CLIENT, kind, empty_server.location], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "sent"
    wait_for(lambda: empty_server.app.lifecycle.in_flight > 0, 30, "the put never reached the server")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: put_statuses(empty_server) > puts)  # the server has finished with the put
    assert empty_server.app.stats.snapshot()["by_status"].get("cancelled", 0) >= 1
    assert_nothing_stored(empty_server, domain="killed.example")


def test_ingest_writer_closed_abruptly_stores_nothing(empty_server: ServerHandle, client: ChronoFlightClient) -> None:
    rows = cdx_rows("abrupt.example", 100)
    # a marked put that ends without its commit: a program that dropped its writer midway
    writer, _ = empty_server.client.do_put(flight.FlightDescriptor.for_path("cdx_records"), rows.schema)
    writer.write_with_metadata(rows.to_batches()[0], pa.py_buffer(b'{"put":"begin"}'))
    with pytest.raises(flight.FlightCancelledError, match="without its commit"):
        writer.close()
    assert_nothing_stored(empty_server, domain="abrupt.example")
    # a call whose deadline passes mid-upload
    options = flight.FlightCallOptions(timeout=0.5)
    puts = put_statuses(empty_server)
    writer, _ = empty_server.client.do_put(flight.FlightDescriptor.for_path("cdx_records"), rows.schema, options)
    writer.write_table(rows)
    wait_for(lambda: put_statuses(empty_server) > puts, 30, "the deadline never ended the put on the server")
    with pytest.raises(flight.FlightError):
        writer.write_table(rows)
        writer.close()
    wait_for(lambda: not leftovers(empty_server.data_dir))
    assert_nothing_stored(empty_server, domain="abrupt.example")

    # the data source of the client fails midway: the client aborts the put
    def failing() -> Iterator[pa.RecordBatch]:
        yield rows.to_batches()[0]
        raise OSError("disk unplugged")

    with pytest.raises(OSError, match="unplugged"):
        client.ingest("cdx_records", pa.RecordBatchReader.from_batches(rows.schema, failing()))
    assert_nothing_stored(empty_server, domain="abrupt.example")
    # the abort marker alone, from a plain client: the server answers CANCELLED itself
    writer, _ = empty_server.client.do_put(flight.FlightDescriptor.for_path("cdx_records"), rows.schema)
    writer.write_table(rows)
    writer.write_metadata(pa.py_buffer(b'{"put":"abort"}'))
    with pytest.raises(flight.FlightCancelledError, match="the client aborted the put; nothing was stored"):
        writer.close()
    assert_nothing_stored(empty_server, domain="abrupt.example")


# -- servers that die ----------------------------------------------------------------------------


def _count(url: str, sql: str) -> int:
    with ChronoFlightClient.connect(url) as client:
        return int(client.sql(sql, cache="bypass").column(0)[0].as_py())


def test_ingest_server_killed_mid_upload_leaves_nothing_after_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, FLIGHT_INGEST__BUFFER_BYTES=str(1 << 20), FLIGHT_INGEST__ROW_GROUP_ROWS="1024")
    failure: list[BaseException] = []
    killed = threading.Event()

    def spilled() -> bool:
        return any(p.name.startswith(".tmp-") and p.stat().st_size > 0 for p in leftovers(tmp_path))

    def upload() -> None:
        rows = cdx_rows("crash.example", 2_000, step=3_600)

        def slowly() -> Iterator[pa.RecordBatch]:
            while not spilled():  # until the server has written part of the upload to disk
                yield from rows.to_batches()
            killed.wait(60)  # then the upload stays open until the server is gone
            yield from rows.to_batches()

        try:
            with ChronoFlightClient.connect(server.url) as client:
                client.ingest("cdx_records", pa.RecordBatchReader.from_batches(rows.schema, slowly()))
        except (ChronoFlightError, pa.ArrowException, OSError) as exc:
            failure.append(exc)

    thread = threading.Thread(target=upload)
    try:
        thread.start()
        wait_for(spilled, 60, "the server never wrote part of the upload")
        server.kill()
        killed.set()
        thread.join(timeout=30)
        assert failure, "the upload should have failed with the server gone"
    finally:
        server.stop()
    restarted = ServerProcess(tmp_path)
    try:
        assert _count(restarted.url, "SELECT count(*) FROM cdx_records") == 0
        assert leftovers(tmp_path) == []
    finally:
        restarted.stop()


def test_ingest_server_killed_after_acknowledging_keeps_every_row(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    try:
        with ChronoFlightClient.connect(server.url) as client:
            acked = [client.ingest("cdx_records", cdx_rows(f"durable-{i}.example", 500, step=9_000)) for i in range(3)]
            acked.append(client.ingest("crash_log", pa.table({"n": list(range(250))})))
        server.kill()  # no shutdown, no flush: SIGKILL right after the last acknowledgement
    finally:
        server.stop()
    # a crash while rewriting the manifest leaves its temporary copy: start-up ignores it
    (tmp_path / "datasets" / "cdx_records" / f".tmp-{MANIFEST}").write_text("{half a manif")
    restarted = ServerProcess(tmp_path)
    try:
        assert _count(restarted.url, "SELECT count(*) FROM cdx_records") == sum(a["rows"] for a in acked[:3]) == 1_500
        assert _count(restarted.url, "SELECT sum(n) FROM crash_log") == sum(range(250))
        files = {f for a in acked for f in a["files"]}
        on_disk = {p.relative_to(tmp_path / "datasets").as_posix() for p in (tmp_path / "datasets").rglob("*.parquet")}
        assert on_disk == files
        assert leftovers(tmp_path) == []
    finally:
        restarted.stop()
    json.loads((tmp_path / "datasets" / "cdx_records" / MANIFEST).read_text())  # intact


def test_ingest_failed_commit_restores_the_previous_state(
    empty_server: ServerHandle, client: ChronoFlightClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The view cannot be created after the manifest was written: both go back as they were."""
    registry = empty_server.app.datasets
    client.ingest("cdx_records", cdx_rows("commit.example", 5))
    manifest = (empty_server.data_dir / "datasets" / "cdx_records" / MANIFEST).read_bytes()
    original = registry._create_view

    def failing(dataset: Any) -> None:
        monkeypatch.setattr(registry, "_create_view", original)  # fails once, as a disk error would
        raise OSError("no space left for the view")

    monkeypatch.setattr(registry, "_create_view", failing)
    with pytest.raises(ChronoFlightError) as error:
        client.ingest("cdx_records", cdx_rows("commit.example", 7, start=MAY_2024 + 3_600))
    assert error.value.status == "internal" and "nothing was stored" in error.value.message
    assert (empty_server.data_dir / "datasets" / "cdx_records" / MANIFEST).read_bytes() == manifest
    assert count(empty_server, "SELECT count(*) FROM cdx_records WHERE domain = 'commit.example'") == 5
    assert leftovers(empty_server.data_dir) == []
    client.ingest("cdx_records", cdx_rows("commit.example", 2, start=MAY_2024 + 7_200))
    assert count(empty_server, "SELECT count(*) FROM cdx_records WHERE domain = 'commit.example'") == 7


def test_ingest_metadata_nested_too_deep_for_a_marker_is_ignored(empty_server: ServerHandle) -> None:
    rows = cdx_rows("deep-metadata.example", 10)
    # a dataset of its own: the other tests here expect cdx_records empty
    writer, acks = empty_server.client.do_put(flight.FlightDescriptor.for_path("deep_metadata"), rows.schema)
    # JSON nested deeper than the decoder's recursion: not a put marker, like any other metadata
    writer.write_with_metadata(rows.to_batches()[0], pa.py_buffer(b"[" * 2000 + b"]" * 2000))
    writer.done_writing()
    ack = acks.read()
    writer.close()
    assert ack is not None and json.loads(ack.to_pybytes())["rows"] == 10
    assert count(empty_server, "SELECT count(*) FROM deep_metadata") == 10
