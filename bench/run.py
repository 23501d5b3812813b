"""Core benchmarks of Chrono Flight: `python -m bench.run [--rows N] [--only B1,B3] [--quick]`.

- B1: bulk DoGet of `SELECT * FROM cdx_records` vs in-process DuckDB `to_arrow_table()`.
- B2: 1M rows into pandas through an HTTP JSON API (Starlette/uvicorn/orjson) vs Flight.
- B3: latency of a small named query, and 8 concurrent clients' throughput vs one.
- B4: the server's peak RSS growth while streaming the B1 result, vs the result's size.

The data directory is filled once with demo data (reused while the generator and DDL
are unchanged); the server under test runs as a separate `flight-server serve` process.
Writes bench/results/core.json and core.md and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import (
    RESULTS_DIR,
    BenchContext,
    FlightServer,
    Plan,
    Result,
    log,
    machine_info,
    prepare_data,
    server_command,
    write_results,
)

GROUPS = ("B1", "B2", "B3", "B4")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="Chrono Flight core benchmarks")
    parser.add_argument("--rows", type=int, help="demo CDX rows (default 10,000,000; 1,000,000 with --quick)")
    parser.add_argument("--only", help="comma-separated subset of B1,B2,B3,B4 (B1 and B4 share a stream)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1M rows, fewer repetitions")
    parser.add_argument("--data-dir", type=Path, help="data directory (default: under the temp directory)")
    parser.add_argument("--fresh", action="store_true", help="regenerate the demo data even if it is current")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where core.json/core.md go")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the server under test, e.g. FLIGHT_DUCKDB__BATCH_ROWS=65536",
    )
    args = parser.parse_args(argv)
    only = {s.strip().upper() for s in args.only.split(",")} if args.only else set(GROUPS)
    unknown = only - set(GROUPS)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(GROUPS)}")
    args.only = only
    if args.rows is None:
        args.rows = 1_000_000 if args.quick else 10_000_000
    for item in args.server_env:
        if "=" not in item:
            parser.error(f"--server-env wants KEY=VALUE, got {item!r}")
    return args


def _failed(name: str, exc: BaseException) -> Result:
    message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return Result(name, "failed", "—", "—", None, "—", "—", False, 0, {"notes": message})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    started_at = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    machine = machine_info()
    root = Path(tempfile.gettempdir()) / "chrono-flight-bench"
    data_dir = args.data_dir or root / f"data-{args.rows}"
    run_dir = root / f"run-{dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    plan = Plan.for_mode(args.quick)
    log(f"{machine['logical_cores']} cores, {args.rows:,} rows, {'quick' if args.quick else 'full'} run")

    data = prepare_data(data_dir, args.rows, fresh=args.fresh)
    extra_env = dict(item.split("=", 1) for item in args.server_env)
    server = FlightServer(data.data_dir, run_dir / "flight_server.log", extra_env)
    results: list[Result] = []
    timings: dict[str, float] = {}
    try:
        ready_s = server.wait_ready()
        log(f"flight-server ready in {ready_s:.1f} s at {server.location} (pid {server.pid})")
        ctx = BenchContext(data, server, plan, run_dir)
        from bench.b1_b4_core import run_b1_b4
        from bench.b2_json import run_b2
        from bench.b3_latency import run_b3

        steps: list[tuple[str, Callable[[BenchContext], list[Result]], set[str]]] = [
            ("B1+B4", run_b1_b4, {"B1", "B4"}),
            ("B2", run_b2, {"B2"}),
            ("B3", run_b3, {"B3"}),
        ]
        for name, step, provides in steps:
            if not provides & args.only:
                continue
            step_started = time.perf_counter()
            try:
                produced = step(ctx)
            except Exception as exc:
                traceback.print_exc()
                produced = [_failed(p, exc) for p in sorted(provides & args.only)]
            timings[name] = round(time.perf_counter() - step_started, 1)
            log(f"{name} took {timings[name]:.0f} s")
            results += [r for r in produced if r.benchmark[:2] in args.only]
            server.check_alive()
    finally:
        server.stop()

    meta = {
        "started": started_at,
        "rows": args.rows,
        "quick": args.quick,
        "only": sorted(args.only),
        "duration_s": round(time.perf_counter() - started, 1),
        "step_seconds": timings,
        "data_generation_s": data.generated_s,
        "data_dir": str(data.data_dir),
        "server_command": server_command(),
        "server_env_extra": extra_env,
        "plan": vars(plan),
        "machine": machine,
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "run_dir": str(run_dir),
    }
    markdown = write_results(results, meta, args.out_dir)
    print(markdown)
    log(f"wrote core.json and core.md to {args.out_dir}; {meta['duration_s']:.0f} s in total")
    return 1 if any(r.title == "failed" for r in results) else 0  # a missed target is a result


if __name__ == "__main__":
    sys.exit(main())
