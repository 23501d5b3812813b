"""B1 (bulk DoGet throughput vs in-process DuckDB) and B4 (server RSS while streaming).

Both measure the same stream: every Flight DoGet of B1 is sampled for B4. The in-process
baseline runs `to_arrow_table()` of the same query on a copy of the database file, in
this process, with as many DuckDB threads as the server has (all cores, its default).
"""

from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import dataclass

import duckdb
import pyarrow.flight as flight

from bench.common import (
    BenchContext,
    FlightServer,
    Result,
    RssSampler,
    fmt_bytes,
    fmt_rate,
    log,
    median,
    timed,
)

B1_SQL = "SELECT * FROM cdx_records"
B1_TARGET = 0.9
B4_TARGET = 0.25
SETTLE_S = 1.5


def bulk_ticket(sql: str) -> flight.Ticket:
    """The one-round-trip DoGet ticket; the cache is bypassed so every run hits DuckDB."""
    return flight.Ticket(json.dumps({"sql": sql, "cache": "bypass"}).encode())


@dataclass
class FlightRun:
    seconds: float
    rows: int
    nbytes: int
    rss_before: int
    rss_peak: int
    samples: int
    server_cpu_s: float
    client_cpu_s: float

    @property
    def growth(self) -> int:
        return self.rss_peak - self.rss_before


def flight_once(client: flight.FlightClient, server: FlightServer, ticket: flight.Ticket) -> FlightRun:
    """One DoGet read into a table, with the server's RSS sampled every 10 ms.

    Waits `SETTLE_S` first: right after a stream the server's allocators are still
    handing memory back, and the growth would be measured from a raised floor.
    """
    time.sleep(SETTLE_S)
    server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
    with RssSampler(server.process, 0.01) as sampler, timed() as elapsed:
        table = client.do_get(ticket).read_all()
    run = FlightRun(
        elapsed[0],
        table.num_rows,
        table.nbytes,
        sampler.start_rss,
        sampler.peak,
        sampler.samples,
        server.cpu_seconds() - server_cpu,
        time.process_time() - client_cpu,
    )
    del table
    gc.collect()
    return run


@dataclass
class LocalRun:
    seconds: float
    rows: int
    nbytes: int
    cpu_s: float


def inprocess_once(con: duckdb.DuckDBPyConnection, sql: str) -> LocalRun:
    """`to_arrow_table()` in this process (CPU time counts DuckDB's threads too)."""
    cursor = con.cursor()
    try:
        cpu = time.process_time()
        with timed() as elapsed:
            table = cursor.sql(sql).to_arrow_table()
        cpu = time.process_time() - cpu
        rows, nbytes = table.num_rows, table.nbytes
        del table
    finally:
        cursor.close()
    gc.collect()
    return LocalRun(elapsed[0], rows, nbytes, cpu)


def run_b1_b4(ctx: BenchContext) -> list[Result]:
    server, reps = ctx.server, ctx.plan.b1_reps
    threads = os.cpu_count() or 1
    con = duckdb.connect(str(ctx.data.baseline_db), read_only=True, config={"threads": threads})
    client = flight.connect(server.location)
    ticket = bulk_ticket(B1_SQL)
    try:
        idle_rss = server.rss()
        log("B1/B4: warm-up (cold server stream, then in-process)")
        cold = flight_once(client, server, ticket)
        after_cold_rss = server.rss()
        inprocess_once(con, B1_SQL)
        flight_runs: list[FlightRun] = []
        local_runs: list[LocalRun] = []
        for rep in range(reps):
            # Alternate which side goes first, so drift in the machine's load hits both.
            if rep % 2 == 0:
                local_runs.append(inprocess_once(con, B1_SQL))
                flight_runs.append(flight_once(client, server, ticket))
            else:
                flight_runs.append(flight_once(client, server, ticket))
                local_runs.append(inprocess_once(con, B1_SQL))
            f, loc = flight_runs[-1], local_runs[-1]
            log(
                f"B1 rep {rep + 1}/{reps}: in-process {loc.seconds:.2f} s, Flight {f.seconds:.2f} s, "
                f"server RSS growth {fmt_bytes(f.growth)} ({f.samples} samples)"
            )
    finally:
        client.close()
        con.close()

    rows = flight_runs[0].rows
    if any(r.rows != rows for r in flight_runs) or any(r.rows != rows for r in local_runs):
        raise RuntimeError("B1: Flight and in-process results differ in row count")
    flight_rates = [r.rows / r.seconds for r in flight_runs]
    local_rates = [r.rows / r.seconds for r in local_runs]
    ratios = [f / loc for f, loc in zip(flight_rates, local_rates, strict=True)]
    ratio = median(ratios)
    b1 = Result(
        benchmark="B1",
        title=f"bulk DoGet `{B1_SQL}` ({rows:,} rows) into pyarrow",
        baseline=f"in-process DuckDB to_arrow_table: {fmt_rate(median(local_rates))} "
        f"({median([r.seconds for r in local_runs]):.2f} s)",
        candidate=f"Flight DoGet read_all: {fmt_rate(median(flight_rates))} "
        f"({median([r.seconds for r in flight_runs]):.2f} s)",
        ratio=ratio,
        ratio_text=f"{ratio:.2f}x",
        target=f">= {B1_TARGET:.2f}x",
        met=ratio >= B1_TARGET,
        repetitions=reps,
        details={
            "rows": rows,
            "arrow_bytes_client": flight_runs[0].nbytes,
            "arrow_bytes_in_process": local_runs[0].nbytes,
            "flight_seconds": [r.seconds for r in flight_runs],
            "in_process_seconds": [r.seconds for r in local_runs],
            "ratios": ratios,
            "in_process_cpu_s": median([r.cpu_s for r in local_runs]),
            "flight_server_cpu_s": median([r.server_cpu_s for r in flight_runs]),
            "flight_client_cpu_s": median([r.client_cpu_s for r in flight_runs]),
            "duckdb_threads": threads,
            "notes": "ratio = Flight rows/s / in-process rows/s, paired per repetition; "
            "one untimed warm-up of each side first; cache bypassed. CPU seconds (medians) show the "
            "work: in-process is DuckDB alone; Flight adds the send (server) and the receive (client), "
            "all on the same cores.",
        },
    )

    nbytes = flight_runs[0].nbytes
    fractions = [r.growth / nbytes for r in flight_runs]
    fraction = median(fractions)
    cold_fraction = cold.growth / nbytes
    b4 = Result(
        benchmark="B4",
        title=f"server peak RSS growth while streaming {rows:,} rows",
        baseline=f"Arrow result (client table.nbytes): {fmt_bytes(nbytes)}",
        candidate=f"peak RSS growth: {fmt_bytes(median([r.growth for r in flight_runs]))} "
        f"(cold first stream: {fmt_bytes(cold.growth)})",
        ratio=fraction,
        ratio_text=f"{fraction:.1%} (cold {cold_fraction:.1%})",
        target=f"< {B4_TARGET:.0%}",
        met=fraction < B4_TARGET,
        repetitions=reps,
        details={
            "growth_bytes": [r.growth for r in flight_runs],
            "fractions": fractions,
            "rss_before_bytes": [r.rss_before for r in flight_runs],
            "rss_peak_bytes": [r.rss_peak for r in flight_runs],
            "samples_per_stream": [r.samples for r in flight_runs],
            "server_idle_rss_bytes": idle_rss,
            "cold_stream_growth_bytes": cold.growth,
            "cold_stream_fraction": cold_fraction,
            "rss_retained_after_cold_stream_bytes": after_cold_rss - idle_rss,
            "notes": "psutil RSS of the server process sampled every 10 ms during each timed B1 stream; "
            f"growth = peak - RSS just before the DoGet (after {SETTLE_S:g} s idle). The cold figure is the "
            "first stream after start-up and includes DuckDB's buffer pool loading the table (kept afterwards).",
        },
    )
    return [b1, b4]
