"""B14: the same queries through the ADBC Flight SQL driver against our server and roapi.

roapi (`pip install '.[bench]'`) is a Rust Flight SQL server on Apache DataFusion. Both
serve the same ZSTD Parquet file on loopback: roapi loads it as table `bench_cdx`; our
server (`flight-server serve`, its own process) ingests it with DoPut into the dataset
`bench_cdx`, written with the file's row-group size (250,000 rows) so that both read the
same layout. Three queries, each `cursor.execute` + `fetch_arrow_table` through one
ADBC connection per server, interleaved per repetition:

- scan: every row and column (2,000,000 rows by default);
- aggregation: rows, mean length and distinct statuses per domain, top 20;
- point lookup: the row of one id.

Warm: our result cache may answer (a scan this large is never cached: it is above
FLIGHT_CACHE__MAX_ENTRY_BYTES and streams); cold: our cache is invalidated before every
repetition. roapi has no result cache, so its warm and cold runs are the same kind of
run. Ratio = median of per-repetition (ours / roapi) times; target <= 1.0 warm, <= 1.5 cold.

Run: `python -m bench.flightsql [--rows N] [--reps N]`; writes bench/results/flightsql.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import adbc_driver_flightsql.dbapi as adbc_flightsql
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq

from bench.common import (
    FlightServer,
    Result,
    ServerProcess,
    free_port,
    log,
    machine_info,
    median,
    write_results,
)

TABLE = "bench_cdx"
QUERIES = {
    "scan": f"SELECT * FROM {TABLE}",
    "aggregation": (
        f"SELECT domain, count(*) AS captures, avg(length) AS mean_length, count(DISTINCT status_code) AS statuses "
        f"FROM {TABLE} GROUP BY domain ORDER BY captures DESC, domain LIMIT 20"
    ),
    "point lookup": f"SELECT * FROM {TABLE} WHERE id = 1234567",
}
TARGETS = {"warm": 1.0, "cold": 1.5}
ROW_GROUP_ROWS = 250_000  # of the Parquet file, and of the dataset our server writes from it


def make_parquet(path: Path, rows: int) -> None:
    """A deterministic CDX-like table: Zipf-like domains, status mix, sizes, timestamps."""
    rng = np.random.default_rng(42)
    domains = np.array([f"site-{i:04d}.example" for i in range(2000)])
    picks = np.minimum(rng.zipf(1.3, rows) - 1, len(domains) - 1)
    table = pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "domain": pa.array(domains[picks]),
            "original_url": pa.array([f"https://x.example/p/{i}" for i in range(rows)]),
            "status_code": pa.array(rng.choice([200, 200, 200, 301, 302, 404, 500], rows).astype(np.int32)),
            "mime_type": pa.array(rng.choice(["text/html", "image/jpeg", "application/pdf"], rows)),
            "length": pa.array(rng.integers(200, 500_000, rows, dtype=np.int64)),
            "captured_at": pa.array(
                rng.integers(820_454_400, 1_730_000_000, rows, dtype=np.int64) * 1_000_000, pa.timestamp("us")
            ),
        }
    )
    pq.write_table(table, path, compression="zstd", row_group_size=ROW_GROUP_ROWS)


class Roapi(ServerProcess):
    def __init__(self, parquet: Path, log_path: Path) -> None:
        self.port = free_port()
        self.location = f"grpc://127.0.0.1:{self.port}"
        argv = [
            str(Path(sys.executable).parent / "roapi"),
            "--addr-flight-sql", f"127.0.0.1:{self.port}",
            "--addr-http", f"127.0.0.1:{free_port()}",
            "--addr-postgres", f"127.0.0.1:{free_port()}",
            "--table", f"{TABLE}={parquet}",
        ]  # fmt: skip
        super().__init__("roapi", argv, {}, log_path)


def connect(location: str) -> Any:
    return adbc_flightsql.connect(location, autocommit=True)


def wait_ready(server: ServerProcess, location: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        server.check_alive()
        try:
            with connect(location) as conn, conn.cursor() as cur:
                cur.execute(f"SELECT count(*) FROM {TABLE}")
                cur.fetchall()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def timed_query(conn: Any, sql: str) -> tuple[float, int]:
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetch_arrow_table().num_rows
    return time.perf_counter() - started, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    root = Path(tempfile.gettempdir()) / "chrono-flight-bench" / "flightsql"
    root.mkdir(parents=True, exist_ok=True)
    parquet = root / f"{TABLE}-{args.rows}.parquet"
    if not parquet.exists():
        log(f"writing {args.rows:,} rows to {parquet.name}")
        make_parquet(parquet, args.rows)
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=root))
    started = time.time()
    ours = FlightServer(data_dir, root / "logs" / "server.log", {"FLIGHT_INGEST__ROW_GROUP_ROWS": str(ROW_GROUP_ROWS)})
    theirs = Roapi(parquet, root / "logs" / "roapi.log")
    try:
        ours.wait_ready()
        with flight.connect(ours.location) as client:
            table = pq.read_table(parquet)
            writer, _ = client.do_put(flight.FlightDescriptor.for_path(TABLE), table.schema)
            writer.write_table(table, max_chunksize=131_072)
            writer.close()
        wait_ready(theirs, theirs.location)
        results = measure(ours, theirs, args.reps)
    finally:
        ours.stop()
        theirs.stop()
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "rows": args.rows,
        "reps": args.reps,
        "duration_s": time.time() - started,
        "machine": machine_info(),
        "command": f"python -m bench.flightsql --rows {args.rows} --reps {args.reps}",
    }
    log("\n" + write_results(results, meta, name="flightsql", render=render))
    return 0


def measure(ours: FlightServer, theirs: Roapi, reps: int) -> list[Result]:
    results = []
    with connect(ours.location) as ours_conn, connect(theirs.location) as roapi_conn:
        invalidate: Callable[[], None] = lambda: _invalidate(ours.location)  # noqa: E731
        for mode in ("warm", "cold"):
            for name, sql in QUERIES.items():
                timed_query(ours_conn, sql)  # first run: connection set up, cache filled for warm
                timed_query(roapi_conn, sql)
                mine, other, ratios = [], [], []
                rows = 0
                for _ in range(reps):
                    if mode == "cold":
                        invalidate()
                    a, rows = timed_query(ours_conn, sql)
                    b, _ = timed_query(roapi_conn, sql)
                    mine.append(a)
                    other.append(b)
                    ratios.append(a / b)
                ratio = median(ratios)
                log(f"B14 {mode} {name}: ours {median(mine) * 1000:.1f} ms, roapi {median(other) * 1000:.1f} ms")
                results.append(
                    Result(
                        benchmark="B14",
                        title=f"{name} ({mode})",
                        baseline=f"roapi {median(other) * 1000:.1f} ms",
                        candidate=f"chrono-flight {median(mine) * 1000:.1f} ms",
                        ratio=ratio,
                        ratio_text=f"{ratio:.2f}x",
                        target=f"<= {TARGETS[mode]}x",
                        met=ratio <= TARGETS[mode],
                        repetitions=reps,
                        details={"sql": sql, "rows": rows, "ours_s": mine, "roapi_s": other, "ratios": ratios},
                    )
                )
        ours.check_alive()
        theirs.check_alive()
    return results


def _invalidate(location: str) -> None:
    with flight.connect(location) as client:
        body = json.dumps({"tables": [TABLE]}).encode()
        list(client.do_action(flight.Action("cache.invalidate", body)))


def render(results: Any, meta: Any) -> str:
    machine = meta.get("machine", {})
    lines = [
        "# B14: Flight SQL through ADBC, Chrono Flight vs roapi",
        "",
        f"`{meta.get('command')}`, run {meta.get('started')}, {meta.get('rows', 0):,} rows in one ZSTD Parquet "
        f"file served by both; {machine.get('logical_cores')} logical cores shared by client and both servers. "
        "Ratio = median of per-repetition times ours / roapi (below 1: we are faster).",
        "",
        "| query | roapi | chrono-flight | ratio | target | met? | reps |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        met = "yes" if r.met else "**no**"
        lines.append(
            f"| {r.title} | {r.baseline} | {r.candidate} | {r.ratio_text} | {r.target} | {met} | {r.repetitions} |"
        )
    lines += ["", "Queries:", ""]
    lines += [f"- {name}: `{sql}`" for name, sql in QUERIES.items()]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
