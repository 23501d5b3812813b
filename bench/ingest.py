"""Ingestion benchmarks: `python -m bench.ingest [--rows N] [--puts N] [--quick]`.

- B12: DoPut of N CDX rows (default 10,000,000) into `cdx_records` of a server running as
  its own process (`flight-server serve`), vs in-process DuckDB
  `COPY ... TO (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (partition_year, partition_month))`
  of the same Arrow table; target >= 0.7x its rows/s. Also the server's peak RSS growth
  during the put (psutil, sampled every 10 ms); target < 512 MiB.
- B13: a dataset built from 1,000 small puts (time-ordered slices of the same rows, as
  scrapers push recent captures): a full scan and an aggregation, before and after
  `dataset.compact`.

The rows come from the demo generator in an in-memory DuckDB (`to_arrow_table()`).
Baseline and candidate run side by side in one process run, interleaved per repetition.
Writes bench/results/ingest.json and ingest.md and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import psutil
import pyarrow as pa

from chrono_flight_client import ChronoFlightClient
from flight_server.demo.analytics import generate_demo_data

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent / "flight-server"
RSS_TARGET = 512 * 1024 * 1024


def log(message: str) -> None:
    print(f"[bench.ingest {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def rate(rows: float) -> str:
    return f"{rows / 1e6:.2f} M rows/s" if rows >= 1e6 else f"{rows / 1e3:.0f} k rows/s"


# -- the server under test ------------------------------------------------------------------


class Server:
    """`flight-server serve` on an empty data directory, in its own process."""

    def __init__(self, data_dir: Path, log_path: Path, **env: str) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FLIGHT_")}
        environ |= {
            "FLIGHT_DATA_DIR": str(data_dir),
            "FLIGHT_PORT": "0",
            "FLIGHT_LOG_LEVEL": "WARNING",
            "FLIGHT_LOG_FORMAT": "text",
            "FLIGHT_CACHE__WARM_TOP_N": "0",
            **env,
        }
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(BIN), "serve"], env=environ, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        assert self.proc.stderr is not None
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            self._log.write(line)
            match = re.search(r"listening on (grpc://\S+)", line)
            url = match.group(1) if match else None
        if url is None:
            raise RuntimeError(f"the server did not start; see {log_path}")
        self.url = url
        self.process = psutil.Process(self.proc.pid)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.write(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


class RssSampler:
    """Peak RSS of a process while the block runs, sampled every 10 ms."""

    def __init__(self, process: psutil.Process) -> None:
        self._process = process
        self._stop = threading.Event()
        self.before = process.memory_info().rss
        self.peak = self.before
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.before


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    out: list[float] = []
    started = time.perf_counter()
    yield out
    out.append(time.perf_counter() - started)


# -- data ------------------------------------------------------------------------------------


def cdx_table(rows: int) -> pa.Table:
    """`rows` demo CDX records as one Arrow table (partition columns included)."""
    con = duckdb.connect()
    con.execute((ROOT / "schemas" / "duckdb.sql").read_text())
    generate_demo_data(con, rows, seed=42, end_date=dt.date(2026, 6, 30))
    table = con.sql("SELECT * FROM base.cdx_records").to_arrow_table()
    con.close()
    return table


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def duckdb_copy(table: pa.Table, target: Path) -> tuple[float, float]:
    """Seconds and CPU seconds for in-process DuckDB to write `table` as partitioned ZSTD Parquet."""
    con = duckdb.connect()
    con.register("cdx", table)
    me = psutil.Process()
    cpu = cpu_seconds(me)
    with stopwatch() as took:
        con.execute(
            f"COPY (SELECT * FROM cdx) TO '{target}' "
            "(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (partition_year, partition_month))"
        )
    cpu = cpu_seconds(me) - cpu
    con.close()
    return took[0], cpu


def put(url: str, dataset: str, data: pa.Table | pa.RecordBatchReader) -> dict[str, Any]:
    with ChronoFlightClient.connect(url) as client:
        return client.ingest(dataset, data)


# -- B12 ----------------------------------------------------------------------------------------


def b12(table: pa.Table, reps: int, work: Path) -> dict[str, Any]:
    rows = table.num_rows
    server = Server(work / "b12-data", work / "b12-server.log")
    copies, puts, growth, ratios = [], [], [], []
    cpu: dict[str, list[float]] = {"copy": [], "put_server": [], "put_client": []}
    me = psutil.Process()
    try:
        put(server.url, "cdx_records", table.slice(0, 10_000))  # warm-up: first put, imports, views
        for rep in range(reps):
            target = work / f"b12-copy-{rep}"
            seconds, copy_cpu = duckdb_copy(table, target)
            copies.append(seconds)
            cpu["copy"].append(round(copy_cpu, 2))
            shutil.rmtree(target)
            time.sleep(1.0)
            server_cpu, client_cpu = cpu_seconds(server.process), cpu_seconds(me)
            with RssSampler(server.process) as rss, stopwatch() as took:
                result = put(server.url, "cdx_records", table)
            cpu["put_server"].append(round(cpu_seconds(server.process) - server_cpu, 2))
            cpu["put_client"].append(round(cpu_seconds(me) - client_cpu, 2))
            assert result["rows"] == rows, result
            puts.append(took[0])
            growth.append(rss.growth)
            ratios.append(copies[-1] / puts[-1])
            log(
                f"B12 rep {rep + 1}: COPY {copies[-1]:.2f} s, DoPut {puts[-1]:.2f} s, RSS +{rss.growth / 2**20:.0f} MiB"
            )
        files = len(result["files"])
    finally:
        server.stop()
    ratio = median(ratios)
    return {
        "rows": rows,
        "arrow_bytes": table.nbytes,
        "copy_seconds": [round(s, 3) for s in copies],
        "put_seconds": [round(s, 3) for s in puts],
        "ratios": [round(r, 3) for r in ratios],
        "ratio": round(ratio, 3),
        "copy_rows_per_s": rows / median(copies),
        "put_rows_per_s": rows / median(puts),
        "rss_growth_bytes": growth,
        "rss_growth_peak": max(growth),
        "files_per_put": files,
        "cpu_seconds": cpu,
        "met_speed": ratio >= 0.7,
        "met_rss": max(growth) < RSS_TARGET,
    }


# -- B13 ----------------------------------------------------------------------------------------

_SCAN = "SELECT * FROM cdx_records"
_AGGREGATE = (
    "SELECT partition_year, count(*) AS captures, count(DISTINCT domain) AS domains, avg(content_length) AS size "
    "FROM cdx_records GROUP BY 1 ORDER BY 1"
)


def timed_query(client: ChronoFlightClient, sql: str, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        with stopwatch() as took:
            client.sql(sql, cache="bypass")
        out.append(took[0])
    return out


def b13(table: pa.Table, puts: int, reps: int, work: Path) -> dict[str, Any]:
    ordered = table.sort_by("unix_timestamp")
    size = ordered.num_rows // puts
    server = Server(work / "b13-data", work / "b13-server.log")
    try:
        started = time.perf_counter()
        with ChronoFlightClient.connect(server.url) as client:
            for i in range(puts):
                client.ingest("cdx_records", ordered.slice(i * size, size))
        load_s = time.perf_counter() - started
        log(f"B13: {puts} puts of {size:,} rows in {load_s:.1f} s")
        with ChronoFlightClient.connect(server.url, timeout=600) as client:
            timed_query(client, _AGGREGATE, 1)  # warm-up
            before = {"scan": timed_query(client, _SCAN, reps), "aggregate": timed_query(client, _AGGREGATE, reps)}
            with stopwatch() as took:
                compaction = client.action("dataset.compact", {"dataset": "cdx_records"})
            timed_query(client, _AGGREGATE, 1)
            after = {"scan": timed_query(client, _SCAN, reps), "aggregate": timed_query(client, _AGGREGATE, reps)}
            rows = client.sql("SELECT count(*) FROM cdx_records").column(0)[0].as_py()
    finally:
        server.stop()
    assert rows == size * puts, rows
    return {
        "puts": puts,
        "rows_per_put": size,
        "rows": rows,
        "load_seconds": round(load_s, 2),
        "compact_seconds": round(took[0], 2),
        "compaction": compaction,
        "before_seconds": {k: [round(s, 4) for s in v] for k, v in before.items()},
        "after_seconds": {k: [round(s, 4) for s in v] for k, v in after.items()},
        "speedup": {k: round(median(before[k]) / median(after[k]), 2) for k in before},
    }


# -- report -------------------------------------------------------------------------------------


def markdown(meta: dict[str, Any], b12r: dict[str, Any], b13r: dict[str, Any]) -> str:
    mib = 2**20
    rows = f"{b12r['rows']:,}"
    lines = [
        "# Chrono Flight ingestion benchmarks",
        "",
        f"Run {meta['started']}, mode {meta['mode']}, total {meta['seconds']:.0f} s. Machine: {meta['machine']}. "
        "Baseline and candidate side by side in one run, interleaved; figures are medians, the ratio is the "
        "median of the per-repetition ratios. Command: `" + meta["command"] + "`.",
        "",
        "| benchmark | baseline | candidate | ratio | target | met? | reps |",
        "|---|---|---|---|---|---|---|",
        f"| B12 DoPut of {rows} CDX rows into `cdx_records` (server process) | in-process DuckDB COPY to "
        f"partitioned ZSTD Parquet: {rate(b12r['copy_rows_per_s'])} | DoPut, acknowledged (durable, visible): "
        f"{rate(b12r['put_rows_per_s'])} | {b12r['ratio']:.2f}x | >= 0.70x | "
        f"{'yes' if b12r['met_speed'] else '**no**'} | {len(b12r['ratios'])} |",
        f"| B12 server peak RSS growth during the put | limit 512 MiB | {b12r['rss_growth_peak'] / mib:.0f} MiB "
        f"(Arrow sent: {b12r['arrow_bytes'] / mib:.0f} MiB) | — | < 512 MiB | {'yes' if b12r['met_rss'] else '**no**'} "
        f"| {len(b12r['ratios'])} |",
    ]
    for kind, title in (("scan", "full scan `SELECT *`"), ("aggregate", "aggregation by year")):
        before = median(b13r["before_seconds"][kind])
        after = median(b13r["after_seconds"][kind])
        lines.append(
            f"| B13 {title} over {b13r['rows']:,} rows from {b13r['puts']:,} puts | before compaction "
            f"({b13r['compaction']['files_before']:,} files): {before:.3f} s | after "
            f"({b13r['compaction']['files_after']:,} files): {after:.3f} s | {b13r['speedup'][kind]:.2f}x faster "
            f"| report | — | {len(b13r['after_seconds'][kind])} |"
        )
    lines += [
        "",
        "## Details",
        "",
        f"- B12 seconds: COPY {b12r['copy_seconds']}, DoPut {b12r['put_seconds']}; ratios {b12r['ratios']}; "
        f"RSS growth MiB {[round(g / mib) for g in b12r['rss_growth_bytes']]}; {b12r['files_per_put']} files per put. "
        f"CPU seconds (all cores; less sensitive to a busy machine than wall time): DuckDB COPY "
        f"{b12r['cpu_seconds']['copy']}, DoPut server {b12r['cpu_seconds']['put_server']} "
        f"+ client {b12r['cpu_seconds']['put_client']}.",
        f"- B13: {b13r['puts']} puts of {b13r['rows_per_put']:,} rows loaded in {b13r['load_seconds']} s; "
        f"`dataset.compact` took {b13r['compact_seconds']} s "
        f"({b13r['compaction']['bytes_before'] / mib:.1f} MiB -> {b13r['compaction']['bytes_after'] / mib:.1f} MiB).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description="Chrono Flight ingestion benchmarks")
    parser.add_argument("--rows", type=int, help="CDX rows of B12 (default 10,000,000; 1,000,000 with --quick)")
    parser.add_argument("--puts", type=int, help="small puts of B13 (default 1,000; 200 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer rows and repetitions")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where ingest.json/ingest.md go")
    args = parser.parse_args(argv)
    rows = args.rows or (1_000_000 if args.quick else 10_000_000)
    puts = args.puts or (200 if args.quick else 1_000)
    reps = 1 if args.quick else 3
    started = time.time()
    log(f"generating {rows:,} CDX rows")
    table = cdx_table(rows)
    b13_rows = min(rows, 1_000 * puts)  # about 1,000 rows a put
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        b12r = b12(table, reps, work)
        b13r = b13(table.slice(0, b13_rows), puts, 3 if args.quick else 5, work)
    command = (
        "python -m bench.ingest"
        + (f" --rows {args.rows}" if args.rows else "")
        + (f" --puts {args.puts}" if args.puts else "")
        + (" --quick" if args.quick else "")
    )
    meta = {
        "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "seconds": time.time() - started,
        "machine": f"{os.cpu_count()} logical cores ({platform.processor() or platform.machine()}), "
        f"{psutil.virtual_memory().total / 1e9:.1f} GB RAM, load {[round(x, 2) for x in os.getloadavg()]}",
        "command": command,
        "duckdb": duckdb.__version__,
        "pyarrow": pa.__version__,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "ingest.json").write_text(json.dumps({"meta": meta, "B12": b12r, "B13": b13r}, indent=1) + "\n")
    text = markdown(meta, b12r, b13r)
    (args.out_dir / "ingest.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
