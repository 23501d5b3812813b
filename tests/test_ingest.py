"""DoPut ingestion against a real server: partitioned ZSTD Parquet, visible at once, compaction."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chrono_flight_client import ChronoFlightClient, InvalidArgument, NotFound
from flight_server.ingest.datasets import MANIFEST
from flight_server.settings import CacheSettings, IngestSettings

from support.ingest import MAY_2024, cdx_rows, count, put
from support.servers import ServerHandle, start_server, stop_server
from support.waiting import wait_for

BIN = Path(sys.executable).parent / "flight-server"


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


@pytest.fixture(scope="module")
def ingest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(tmp_path_factory.mktemp("ingest"), rows=5_000, cache=CacheSettings(warm_top_n=0))
    yield handle
    stop_server(handle)


@pytest.fixture(scope="module")
def client(ingest_server: ServerHandle) -> Iterator[ChronoFlightClient]:
    with ChronoFlightClient.connect(ingest_server.location, timeout=60) as c:
        yield c


def test_ingest_cdx_records_visible_at_once_partitioned_zstd(ingest_server: ServerHandle) -> None:
    before = count(ingest_server, "SELECT count(*) FROM cdx_records")
    rows = cdx_rows("ingest-a.example", 40, step=86_400 * 3)  # May to August 2024
    rows = rows.append_column("partition_year", pa.array([1999] * 40, pa.int32()))  # ignored: derived
    result = put(ingest_server, "cdx_records", rows, chunk=7)
    assert result["rows"] == 40
    assert result["bytes"] == sum((ingest_server.data_dir / "datasets" / f).stat().st_size for f in result["files"])
    assert sorted({str(Path(f).parent) for f in result["files"]}) == [
        f"cdx_records/partition_year=2024/partition_month={m}" for m in (5, 6, 7, 8)
    ]
    assert count(ingest_server, "SELECT count(*) FROM cdx_records") == before + 40
    got = ingest_server.get(
        {"sql": "SELECT * FROM cdx_records WHERE domain = $1 ORDER BY id", "params": ["ingest-a.example"]}
    )
    assert got.schema.names[:12] == [
        "id", "domain", "original_url", "unix_timestamp", "mime_type", "status_code", "content_length",
        "archive_source", "project_id", "created_at", "partition_year", "partition_month",
    ]  # fmt: skip
    stamps = [dt.datetime.fromtimestamp(t, dt.UTC) for t in got.column("unix_timestamp").to_pylist()]
    assert got.column("partition_year").to_pylist() == [s.year for s in stamps]
    assert got.column("partition_month").to_pylist() == [s.month for s in stamps]
    for name in result["files"]:
        meta = pq.ParquetFile(ingest_server.data_dir / "datasets" / name).metadata
        assert meta.row_group(0).column(0).compression == "ZSTD"
        assert "partition_year" not in meta.schema.names  # partition keys live in the path
    assert not [p for p in (ingest_server.data_dir / "datasets").rglob(".tmp-*")]


def test_ingest_widens_types_to_the_table_schema(ingest_server: ServerHandle) -> None:
    n = 5
    rows = pa.table(
        {
            "ID": pa.array([f"w-{i}" for i in range(n)], pa.large_string()),  # case-insensitive match
            "domain": pa.array(["widen.example"] * n).dictionary_encode(),
            "original_url": pa.array(["https://widen.example/"] * n, pa.string_view()),
            "unix_timestamp": pa.array([MAY_2024 + i for i in range(n)], pa.uint32()),
            "status_code": pa.array([200] * n, pa.int16()),
            "content_length": pa.array([1, 2, 3, 4, None], pa.int32()),
            "created_at": pa.array([MAY_2024 * 1000 + i for i in range(n)], pa.timestamp("ms", "Europe/Paris")),
        }
    )
    put(ingest_server, "cdx_records", rows)
    got = ingest_server.get({"sql": "SELECT * FROM cdx_records WHERE domain = 'widen.example' ORDER BY id"})
    assert got.column("id").to_pylist() == [f"w-{i}" for i in range(n)]
    assert got.schema.field("status_code").type == pa.int32()
    assert got.column("content_length").to_pylist() == [1, 2, 3, 4, None]
    assert got.column("created_at").to_pylist()[0] == dt.datetime(2024, 5, 1, 0, 0, 0)  # UTC wall time


def test_ingest_extra_columns_evolve_the_schema(ingest_server: ServerHandle) -> None:
    rows = cdx_rows("evolve.example", 3).append_column("crawler", pa.array(["heritrix", None, "brozzler"]))
    put(ingest_server, "cdx_records", rows)
    put(ingest_server, "cdx_records", cdx_rows("evolve2.example", 2))  # without it: still fine
    got = ingest_server.get(
        {"sql": "SELECT domain, crawler FROM cdx_records WHERE domain LIKE 'evolve%' ORDER BY domain, id"}
    )
    assert got.column("crawler").to_pylist() == ["heritrix", None, "brozzler", None, None]
    base = count(ingest_server, "SELECT count(*) FROM cdx_records WHERE crawler IS NULL AND domain = 'example.com'")
    assert base > 0  # demo rows of the base table read as null


def test_ingest_content_and_metrics_partitioned_by_day(ingest_server: ServerHandle) -> None:
    content = pa.table(
        {
            "page_id": ["p1", "p2", "p3"],
            "quality_score": pa.array([0.5, 0.7, 0.9], pa.float64()),  # the table stores FLOAT: narrowing
            "date_captured": pa.array([dt.date(2024, 5, 1), dt.date(2024, 5, 1), dt.date(2024, 5, 2)]),
        }
    )
    with pytest.raises(pa.ArrowInvalid, match="quality_score"):
        put(ingest_server, "content_analytics", content)
    content = content.set_column(1, "quality_score", pa.array([0.5, 0.75, 0.25], pa.float32()))
    result = put(ingest_server, "content_analytics", content)
    assert sorted(Path(f).parent.name for f in result["files"]) == [
        "date_captured=2024-05-01",
        "date_captured=2024-05-02",
    ]
    got = ingest_server.get({"sql": "SELECT * FROM content_analytics WHERE page_id IN ('p1','p2','p3') ORDER BY 1"})
    assert got.column("date_captured").to_pylist() == [dt.date(2024, 5, 1)] * 2 + [dt.date(2024, 5, 2)]

    metrics = pa.table(
        {
            "metric_id": ["m1", "m2"],
            "metric_type": ["ingest_test", "ingest_test"],
            "value": pa.array([1, 2], pa.int64()),  # exact integers widen to double
            "timestamp": pa.array([dt.datetime(2024, 5, 1, 23, 59), dt.datetime(2024, 5, 2, 0, 1)]),
        }
    )
    result = put(ingest_server, "performance_metrics", metrics)
    assert sorted(Path(f).parent.name for f in result["files"]) == [
        "partition_day=2024-05-01",
        "partition_day=2024-05-02",
    ]
    sql = "SELECT value, retention_days FROM performance_metrics WHERE metric_type = 'ingest_test'"
    got = ingest_server.get({"sql": sql})
    assert sorted(got.column("value").to_pylist()) == [1.0, 2.0]
    assert got.column("retention_days").to_pylist() == [90, 90]  # the table's default
    demo_day = ingest_server.get({"sql": "SELECT partition_day, timestamp FROM performance_metrics LIMIT 1"})
    assert demo_day.column(0)[0].as_py() == demo_day.column(1)[0].as_py().date()


def test_ingest_partition_pruning_shows_in_explain(ingest_server: ServerHandle) -> None:
    put(ingest_server, "cdx_records", cdx_rows("prune.example", 3, start=1_262_304_000))  # January 2010
    plan = ingest_server.action(
        "explain", {"sql": "SELECT count(*) FROM cdx_records WHERE partition_year = 2010 AND partition_month = 1"}
    )["engine_plan"]
    assert "File Filters" in plan
    scanning = next(line for line in plan.splitlines() if "Scanning Files" in line)
    read, total = scanning.split("Scanning Files:")[1].strip(" │").split("/")
    assert int(read) == 1 < int(total)


def test_ingest_bumps_the_cache_version(ingest_server: ServerHandle) -> None:
    command = {"sql": "SELECT count(*) AS n FROM cdx_records WHERE domain = 'cache.example'"}
    assert ingest_server.get(command).column("n")[0].as_py() == 0
    reader = ingest_server.client.do_get(flight.Ticket(json.dumps(command).encode()))
    assert json.loads(reader.read_chunk().app_metadata.to_pybytes())["cache"] == "hit-l1"
    put(ingest_server, "cdx_records", cdx_rows("cache.example", 4))
    reader = ingest_server.client.do_get(flight.Ticket(json.dumps(command).encode()))
    chunk = reader.read_chunk()
    assert json.loads(chunk.app_metadata.to_pybytes())["cache"] == "miss"
    assert chunk.data.column(0)[0].as_py() == 4


def test_ingest_new_dataset_schema_fixed_by_first_put(ingest_server: ServerHandle, client: ChronoFlightClient) -> None:
    first = pa.table({"k": pa.array([1, 2], pa.int32()), "label": ["a", "b"]})
    result = client.ingest("scrape_runs", first)
    assert result["files"][0].startswith("scrape_runs/")
    assert client.ingest("scrape_runs", pa.table({"k": pa.array([3], pa.int16()), "label": ["c"]}))["rows"] == 1
    with pytest.raises(InvalidArgument, match="'k'"):
        client.ingest("scrape_runs", pa.table({"k": ["x"], "label": ["d"]}))
    with pytest.raises(InvalidArgument, match="'label' is missing"):
        client.ingest("scrape_runs", pa.table({"k": pa.array([4], pa.int32())}))
    got = client.sql("SELECT * FROM scrape_runs ORDER BY k")
    assert got.to_pydict() == {"k": [1, 2, 3], "label": ["a", "b", "c"]}
    datasets = {d["name"]: d for d in client.datasets()}
    assert datasets["scrape_runs"]["rows"] == 3
    assert datasets["scrape_runs"]["schema"].names == ["k", "label"]
    assert (
        client.ingest("scrape_runs", pa.table({"k": pa.array([], pa.int32()), "label": pa.array([], pa.string())}))[
            "files"
        ]
        == []
    )


def test_ingest_empty_first_put_creates_the_dataset(client: ChronoFlightClient) -> None:
    empty = pa.table({"a": pa.array([], pa.int64()), "b": pa.array([], pa.timestamp("us", "UTC"))})
    assert client.ingest("empty_start", empty)["rows"] == 0
    assert client.sql("SELECT count(*) AS n FROM empty_start").column("n")[0].as_py() == 0
    assert client.schema({"sql": "SELECT * FROM empty_start"}).field("b").type == pa.timestamp("us", "Etc/UTC")


def test_ingest_client_pandas_and_polars(client: ChronoFlightClient) -> None:
    frame = pd.DataFrame(
        {
            "id": ["pd-1", "pd-2"],
            "domain": ["pandas.example"] * 2,
            "original_url": ["https://pandas.example/a", "https://pandas.example/b"],
            "unix_timestamp": [MAY_2024, MAY_2024 + 60],
            "created_at": pd.to_datetime(["2024-05-01 10:00", "2024-05-01 11:00"]),
        }
    )
    assert client.ingest("cdx_records", frame)["rows"] == 2
    polars = pl.DataFrame(
        {
            "id": ["pl-1"],
            "domain": ["polars.example"],
            "original_url": ["https://polars.example/"],
            "unix_timestamp": [MAY_2024],
            "mime_type": ["text/html"],
        }
    )
    assert client.ingest("cdx_records", polars)["rows"] == 1
    assert client.ingest("cdx_records", polars.lazy().with_columns(pl.lit("pl-2").alias("id")))["rows"] == 1
    got = client.sql("SELECT id FROM cdx_records WHERE domain IN ('pandas.example', 'polars.example') ORDER BY id")
    assert got.column("id").to_pylist() == ["pd-1", "pd-2", "pl-1", "pl-2"]


def test_ingest_concurrent_puts_to_one_dataset(ingest_server: ServerHandle) -> None:
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(3):
                put(ingest_server, "cdx_records", cdx_rows(f"conc-{i}-{j}.example", 50, step=3_600 * 24 * 11))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert count(ingest_server, "SELECT count(*) FROM cdx_records WHERE domain LIKE 'conc-%'") == 4 * 3 * 50


def test_ingest_compaction_merges_small_files_atomically(ingest_server: ServerHandle) -> None:
    for i in range(6):
        put(ingest_server, "cdx_records", cdx_rows(f"compact-{i}.example", 10, start=1_199_145_600))  # Jan 2008
    folder = ingest_server.data_dir / "datasets" / "cdx_records" / "partition_year=2008" / "partition_month=1"
    assert len(list(folder.glob("*.parquet"))) == 6
    sql = "SELECT count(*), sum(hash(id)) FROM cdx_records WHERE partition_year = 2008"
    expected = ingest_server.get({"sql": sql, "cache": "bypass"}).to_pylist()
    seen: list[Any] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(ingest_server.get({"sql": sql, "cache": "bypass"}).to_pylist())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        result = ingest_server.action(
            "dataset.compact", {"dataset": "cdx_records", "partition": {"partition_year": 2008, "partition_month": 1}}
        )
        after = len(seen)  # the next read may have begun before the compaction; the one after it did not
        wait_for(lambda: len(seen) > after + 1, 60, "no read after the compaction")
    finally:
        stop.set()
        thread.join()
    assert (result["files_before"], result["files_after"], result["rows"]) == (6, 1, 60)
    assert seen and all(s == expected for s in seen)  # never missing, never doubled
    assert ingest_server.get({"sql": sql, "cache": "bypass"}).to_pylist() == expected

    def swept() -> bool:  # replaced files outlive the queries that might still read them, then go
        ingest_server.app.datasets.sweep_retired()
        return [p.name.startswith("compact-") for p in folder.glob("*.parquet")] == [True]

    wait_for(swept, 60, "the replaced files were never swept")
    again = ingest_server.action("dataset.compact", {"dataset": "cdx_records"})
    assert again["files_after"] <= again["files_before"]
    with pytest.raises(pa.ArrowKeyError):
        ingest_server.action("dataset.compact", {"dataset": "cdx_records", "partition": "partition_year=1800"})


def test_ingest_streams_batches_to_disk_before_the_end(tmp_path: Path) -> None:
    handle = start_server(tmp_path, ingest=IngestSettings(buffer_bytes=1024 * 1024, row_group_rows=1024))
    try:
        rows = cdx_rows("stream.example", 20_000, step=60)
        writer, acks = handle.client.do_put(flight.FlightDescriptor.for_path("cdx_records"), rows.schema)
        writer.write_table(rows, max_chunksize=2_000)
        wait_for(
            lambda: [p for p in (tmp_path / "datasets").rglob(".tmp-*") if p.stat().st_size > 0],
            60,
            "nothing was written while the upload was still open",
        )
        assert count(handle, "SELECT count(*) FROM cdx_records") == 0  # not before the commit
        writer.done_writing()
        assert json.loads(acks.read().to_pybytes())["rows"] == 20_000
        writer.close()
        assert count(handle, "SELECT count(*) FROM cdx_records") == 20_000
        groups = pq.ParquetFile(tmp_path / "datasets" / "cdx_records" / handle_files(tmp_path)[0]).metadata
        assert groups.row_group(0).num_rows <= 1024
    finally:
        stop_server(handle)


def handle_files(data_dir: Path) -> list[str]:
    manifest = json.loads((data_dir / "datasets" / "cdx_records" / MANIFEST).read_text())
    return [entry["path"] for entry in manifest["files"]]


def test_ingest_survives_a_restart_and_cleans_up(tmp_path: Path) -> None:
    handle = start_server(tmp_path)
    try:
        put(handle, "cdx_records", cdx_rows("restart.example", 12))
        put(handle, "kept_dataset", pa.table({"x": [1, 2, 3]}))
    finally:
        stop_server(handle)
    # what a crash mid-put leaves: a temporary file and a renamed file no manifest lists
    stray = tmp_path / "datasets" / "cdx_records" / "partition_year=2024" / "partition_month=5"
    pq.write_table(cdx_rows("ghost.example", 5), stray / ".tmp-put-ghost-0.parquet")
    pq.write_table(cdx_rows("ghost.example", 5), stray / "put-ghost-1.parquet")
    (tmp_path / "datasets" / "never_committed").mkdir()
    pq.write_table(pa.table({"x": [9]}), tmp_path / "datasets" / "never_committed" / "put-x-0.parquet")
    handle = start_server(tmp_path)
    try:
        assert count(handle, "SELECT count(*) FROM cdx_records") == 12
        assert count(handle, "SELECT sum(x) FROM kept_dataset") == 6
        assert not (stray / ".tmp-put-ghost-0.parquet").exists() and not (stray / "put-ghost-1.parquet").exists()
        assert not (tmp_path / "datasets" / "never_committed").exists()
        assert set(handle.app.registry.tables()) >= {"kept_dataset", "cdx_records"}
    finally:
        stop_server(handle)


def test_ingest_raw_sql_still_cannot_read_files(ingest_server: ServerHandle, client: ChronoFlightClient) -> None:
    client.ingest("cdx_records", cdx_rows("files.example", 2))  # files of its own, whatever ran before
    files = data_files(ingest_server.data_dir / "datasets")
    assert files
    with pytest.raises(pa.ArrowInvalid, match=r"function read_parquet\(\) is not allowed"):
        ingest_server.get({"sql": f"SELECT * FROM read_parquet('{files[0]}')"})
    with pytest.raises(pa.ArrowInvalid, match=r"unknown table '<path>"):
        ingest_server.get({"sql": f"SELECT * FROM '{files[0]}'"})


def test_ingest_new_datasets_refused_when_not_allowed(tmp_path: Path) -> None:
    handle = start_server(tmp_path, ingest=IngestSettings(allow_new_datasets=False))
    try:
        with ChronoFlightClient.connect(handle.location) as client:
            with pytest.raises(NotFound, match="ALLOW_NEW_DATASETS"):
                client.ingest("fresh_one", pa.table({"a": [1]}))
            assert client.ingest("cdx_records", cdx_rows("allowed.example", 1))["rows"] == 1
        assert not (tmp_path / "datasets" / "fresh_one").exists()
    finally:
        stop_server(handle)


def test_ingest_moves_tables_of_the_old_layout(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "analytics.duckdb"))
    con.execute(
        "CREATE TABLE cdx_records (id VARCHAR NOT NULL, domain VARCHAR NOT NULL, original_url VARCHAR NOT NULL, "
        "unix_timestamp BIGINT NOT NULL, mime_type VARCHAR, status_code INTEGER, content_length BIGINT, "
        "archive_source VARCHAR, project_id VARCHAR, created_at TIMESTAMP, partition_year INTEGER, "
        "partition_month INTEGER)"
    )
    con.execute(
        "INSERT INTO cdx_records (id, domain, original_url, unix_timestamp) VALUES ('o', 'old.example', 'u', 1)"
    )
    con.close()
    handle = start_server(tmp_path)
    try:
        assert count(handle, "SELECT count(*) FROM cdx_records WHERE domain = 'old.example'") == 1
        put(handle, "cdx_records", cdx_rows("new.example", 2))
        assert count(handle, "SELECT count(*) FROM cdx_records") == 3
    finally:
        stop_server(handle)


def test_ingest_cli_streams_parquet_csv_and_arrow_files(ingest_server: ServerHandle, tmp_path: Path) -> None:
    rows = cdx_rows("cli.example", 3_000, step=600)
    pq.write_table(rows, tmp_path / "c.parquet", row_group_size=500)
    pacsv.write_csv(rows.slice(0, 100), tmp_path / "c.csv")
    with pa.OSFile(str(tmp_path / "c.arrow"), "wb") as sink, pa.ipc.new_file(sink, rows.schema) as ipc:
        ipc.write_table(rows.slice(0, 10), max_chunksize=3)
    with pa.OSFile(str(tmp_path / "c.arrows"), "wb") as sink, pa.ipc.new_stream(sink, rows.schema) as ipc:
        ipc.write_table(rows.slice(0, 7))
    env = {"PATH": "/usr/bin:/bin", "FLIGHT_LOG_FORMAT": "text"}
    for name, n in (("c.parquet", 3_000), ("c.csv", 100), ("c.arrow", 10), ("c.arrows", 7)):
        out = subprocess.run(
            [
                str(BIN),
                "ingest",
                "cdx_records",
                str(tmp_path / name),
                "--url",
                ingest_server.location,
                "--batch-rows",
                "400",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["rows"] == n
        assert "100.0%" in out.stderr  # the progress bar ran to the end
    assert count(ingest_server, "SELECT count(*) FROM cdx_records WHERE domain = 'cli.example'") == 3_117
    bad = subprocess.run(
        [str(BIN), "ingest", "../x", str(tmp_path / "c.csv"), "--url", ingest_server.location],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "invalid_argument" in bad.stderr and "Traceback" not in bad.stderr


# -- property: Arrow types round-trip through a put into a new dataset and back -------------

_TIMESTAMPS = [pa.timestamp(unit, tz) for unit in ("s", "ms", "us", "ns") for tz in (None, "UTC", "America/New_York")]
_SCALARS = [
    pa.null(), pa.bool_(), pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint16(), pa.float32(), pa.float64(),
    pa.string(), pa.large_string(), pa.date32(), pa.decimal128(9, 3), pa.decimal128(38, 0), *_TIMESTAMPS,
]  # fmt: skip
# 0001-01-02 to 9999-12-30, which Python's datetime holds in any zone; nanoseconds within 1823 to
# 2116, which pandas converts in any zone
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000}
_TS_RANGE = {u: (-62_135_510_400 * f, 253_402_214_400 * f) for u, f in _PER_SECOND.items()}
_TS_RANGE["ns"] = (-(2**62), 2**62)

arrow_types = st.recursive(
    st.sampled_from(_SCALARS),
    lambda inner: st.one_of(
        inner.map(pa.list_),
        st.lists(inner, min_size=1, max_size=3).map(lambda ts: pa.struct([(f"f{i}", t) for i, t in enumerate(ts)])),
    ),
    max_leaves=4,
)


def values_of(t: pa.DataType) -> st.SearchStrategy[Any]:
    if pa.types.is_null(t):
        return st.none()
    if pa.types.is_boolean(t):
        value: st.SearchStrategy[Any] = st.booleans()
    elif pa.types.is_integer(t):
        info = pa.types.is_signed_integer(t)
        bits = t.bit_width
        value = st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if info else st.integers(0, 2**bits - 1)
    elif pa.types.is_floating(t):
        value = st.floats(allow_nan=False, width=t.bit_width)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        value = st.text(max_size=20)
    elif pa.types.is_date32(t):
        value = st.dates()
    elif pa.types.is_decimal(t):
        digits = 10**t.precision - 1
        value = st.integers(-digits, digits).map(lambda i: decimal.Decimal(f"{i}E-{t.scale}"))  # exact
    elif pa.types.is_timestamp(t):
        value = st.integers(*_TS_RANGE[t.unit])
    elif pa.types.is_list(t):
        value = st.lists(values_of(t.value_type), max_size=3)
    else:
        fields = [t.field(i) for i in range(t.num_fields)]
        value = st.fixed_dictionaries({f.name: values_of(f.type) for f in fields})
    return st.one_of(st.none(), value)


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    types = draw(st.lists(arrow_types, min_size=1, max_size=4))
    n = draw(st.integers(0, 6))
    columns: dict[str, pa.Array] = {"_row": pa.array(range(n), pa.int64())}
    for i, t in enumerate(types):
        columns[f"c{i}"] = pa.array(draw(st.lists(values_of(t), min_size=n, max_size=n)), t)
    return pa.table(columns)


_counter = iter(range(10**6))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=tables())
def test_ingest_arrow_types_round_trip(client: ChronoFlightClient, table: pa.Table) -> None:
    name = f"roundtrip_{next(_counter)}"
    assert client.ingest(name, table)["rows"] == table.num_rows
    got = client.sql(f"SELECT * FROM {name} ORDER BY _row")
    assert got.column_names == table.column_names
    for column in table.column_names:
        want = table.column(column).combine_chunks()
        have = got.column(column).combine_chunks()
        if have.to_pylist() != want.to_pylist():  # e.g. ints as decimals: compare as the sent type
            assert have.cast(want.type).to_pylist() == want.to_pylist(), column


def test_ingest_sink_continues_partitions_past_the_open_file_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More partitions than open spill files: each still ends as one complete Parquet file."""
    from flight_server.ingest import parquet_sink

    monkeypatch.setattr(parquet_sink, "MAX_OPEN_FILES", 2)
    schema = pa.schema([("n", pa.int64())])
    sink = parquet_sink.ParquetSink(
        tmp_path, "put-x", schema, IngestSettings(buffer_bytes=1024 * 1024), partition_of=lambda c: f"k={c}"
    )
    for round_ in range(4):
        batch = pa.record_batch([pa.array(range(round_ * 50, round_ * 50 + 50), pa.int64())], schema=schema)
        sink.write(batch, codes=np.arange(50) % 5)
        sink._drain()
        sink._spill_soon()  # force a spill per round: partitions cycle through two open files
    files = sink.finish()
    assert sorted(f.partition for f in files) == [f"k={i}" for i in range(5)]
    for f in files:
        values = pq.read_table(tmp_path / f.path).column("n").to_pylist()
        assert f.rows == len(values) == 40
        assert values == sorted(values)  # arrival order kept within a partition
    assert not list(tmp_path.rglob(".tmp-*"))


def test_ingest_compaction_of_an_evolved_new_dataset(client: ChronoFlightClient) -> None:
    client.ingest("evolving_log", pa.table({"k": [1, 2]}))
    client.ingest("evolving_log", pa.table({"k": [3], "note": ["late column"]}))
    client.ingest(
        "evolving_log",
        pa.table({"k": [4], "note": [None]}, schema=pa.schema([("k", pa.int64()), ("note", pa.string())])),
    )
    before = client.sql("SELECT * FROM evolving_log ORDER BY k").to_pylist()
    result = client.action("dataset.compact", {"dataset": "evolving_log"})
    assert (result["files_before"], result["files_after"]) == (3, 1)
    assert client.sql("SELECT * FROM evolving_log ORDER BY k").to_pylist() == before
    assert before[2] == {"k": 3, "note": "late column"} and before[0]["note"] is None
