"""Where B1's time goes: `python -m bench.profile_b1 [--rows N] [--reps R]`.

Runs the B1 stream (`SELECT * FROM cdx_records`, cache bypassed) against several
servers, one at a time, each interleaved with the in-process `to_arrow_table()`
baseline, and records wall time and CPU seconds of server and client:

- the product with its defaults, with other batch sizes (one batch is one gRPC
  message) and with one DuckDB thread;
- bench/raw_flight.py streaming DuckDB's reader (the least a DuckDB Flight server does);
- bench/raw_flight.py sending a result materialized at start-up (the transport alone).

Writes bench/results/profile_b1.json and profile_b1.md and prints the table. Uses the
data set of bench.run (generated if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.flight as flight

from bench.b1_b4_core import B1_SQL, bulk_ticket, inprocess_once
from bench.common import (
    RESULTS_DIR,
    FlightServer,
    ServerProcess,
    free_port,
    log,
    machine_info,
    median,
    prepare_data,
    wait_flight_ready,
)

PRODUCT_VARIANTS: dict[str, dict[str, str]] = {
    "product, defaults (131,072-row batches, all cores)": {},
    "product, 32,768-row batches": {"FLIGHT_DUCKDB__BATCH_ROWS": "32768"},
    "product, 1,048,576-row batches": {"FLIGHT_DUCKDB__BATCH_ROWS": "1048576"},
    "product, 1 DuckDB thread": {"FLIGHT_DUCKDB__THREADS": "1"},
}
RAW_VARIANTS = {
    "minimal pyarrow server streaming DuckDB's reader": "reader",
    "transport only (result materialized before the timer)": "table",
}


@dataclass
class Row:
    variant: str
    flight_s: float
    local_s: float
    ratio: float
    server_cpu_s: float
    client_cpu_s: float
    local_cpu_s: float


def _measure(
    name: str, server: ServerProcess, location: str, ticket: flight.Ticket, con: duckdb.DuckDBPyConnection, reps: int
) -> Row:
    client = flight.connect(location)
    try:
        client.do_get(ticket).read_all()  # warm-up
        flights: list[tuple[float, float, float]] = []
        locals_: list[tuple[float, float]] = []
        for rep in range(reps):
            for side in ("local", "flight") if rep % 2 == 0 else ("flight", "local"):
                if side == "local":
                    run = inprocess_once(con, B1_SQL)
                    locals_.append((run.seconds, run.cpu_s))
                    continue
                server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
                started = time.perf_counter()
                table = client.do_get(ticket).read_all()
                elapsed = time.perf_counter() - started
                flights.append((elapsed, server.cpu_seconds() - server_cpu, time.process_time() - client_cpu))
                del table
    finally:
        client.close()
    ratios = [loc[0] / f[0] for f, loc in zip(flights, locals_, strict=True)]
    row = Row(
        name,
        median([f[0] for f in flights]),
        median([loc[0] for loc in locals_]),
        median(ratios),
        median([f[1] for f in flights]),
        median([f[2] for f in flights]),
        median([loc[1] for loc in locals_]),
    )
    log(f"{name}: Flight {row.flight_s:.2f} s vs in-process {row.local_s:.2f} s = {row.ratio:.2f}x")
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_b1", description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args(argv)
    root = Path(tempfile.gettempdir()) / "chrono-flight-bench"
    data = prepare_data(args.data_dir or root / f"data-{args.rows}", args.rows)
    run_dir = root / f"profile-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    con = duckdb.connect(str(data.baseline_db), read_only=True, config={"threads": os.cpu_count() or 1})
    rows: list[Row] = []
    started = time.perf_counter()
    try:
        for i, (name, env) in enumerate(PRODUCT_VARIANTS.items()):
            server = FlightServer(data.data_dir, run_dir / f"product-{i}.log", env)
            try:
                server.wait_ready()
                rows.append(_measure(name, server, server.location, bulk_ticket(B1_SQL), con, args.reps))
            finally:
                server.stop()
        for name, mode in RAW_VARIANTS.items():
            port = free_port()
            argv = [sys.executable, "-m", "bench.raw_flight", "--db", str(data.baseline_db)]
            argv += ["--port", str(port), "--mode", mode]
            raw = ServerProcess(name, argv, dict(os.environ), run_dir / f"raw-{mode}.log")
            location = f"grpc://127.0.0.1:{port}"
            try:
                wait_flight_ready(raw, location)
                rows.append(_measure(name, raw, location, flight.Ticket(b"131072"), con, args.reps))
            finally:
                raw.stop()
    finally:
        con.close()

    machine = machine_info()
    lines = [
        "# B1 profile: where the bulk DoGet time goes",
        "",
        f"{args.rows:,} rows, {args.reps} repetitions per variant, each interleaved with the in-process "
        f"baseline; {machine['logical_cores']} cores; {time.perf_counter() - started:.0f} s. "
        "CPU seconds are medians: server = the server process, client = the reading process "
        "(in-process: DuckDB's threads in this process).",
        "",
        "| variant | Flight s | in-process s | ratio | server CPU s | client CPU s | in-process CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.variant} | {r.flight_s:.2f} | {r.local_s:.2f} | {r.ratio:.2f}x | {r.server_cpu_s:.2f} | "
            f"{r.client_cpu_s:.2f} | {r.local_cpu_s:.2f} |"
        )
    markdown = "\n".join(lines) + "\n"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "profile_b1.md").write_text(markdown)
    payload = {"rows": args.rows, "reps": args.reps, "machine": machine, "variants": [vars(r) for r in rows]}
    (RESULTS_DIR / "profile_b1.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
