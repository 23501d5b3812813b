"""Entry point of `python -m bench.postgres`: runs B5-B7 and writes postgres.json and postgres.md."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import common
from bench.common import RESULTS_DIR, Result, log, machine_info, prepare_data, server_command
from bench.postgres.catalogue import run_b5
from bench.postgres.databases import READER_ROLE, Databases, PgPlan, copy_analytics, pg_uri, setup_databases
from bench.postgres.hybrid import run_b7
from bench.postgres.report import render_markdown
from bench.postgres.scans import run_b6
from bench.postgres.servers import one_line, probe_restart, refresh_registry, running_servers, server_env


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.postgres", description="Chrono Flight B5-B7")
    parser.add_argument("--rows", type=int, help="demo CDX rows (default 10,000,000; 1,000,000 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1M rows, fewer repetitions")
    parser.add_argument("--only", help="comma-separated subset of B5,B6,B7")
    parser.add_argument("--data-dir", type=Path, help="DuckDB data directory (default: under the temp directory)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where postgres.json/.md go")
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = 1_000_000 if args.quick else 10_000_000
    groups = {"B5", "B6", "B7"}
    args.only = {s.strip().upper() for s in args.only.split(",")} if args.only else groups
    if args.only - groups:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(args.only - groups))}")
    return args


def _failed(name: str, exc: BaseException) -> Result:
    return Result(name, "failed", "—", "—", None, "—", "—", False, 0, {"notes": one_line(exc)})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    started_at = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    machine = machine_info()
    plan = PgPlan.for_mode(args.quick)
    root = Path(tempfile.gettempdir()) / "chrono-flight-bench"
    run_dir = root / f"pg-run-{dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    data_dir = args.data_dir or root / f"pg-data-{args.rows}"
    log(f"{machine['logical_cores']} cores, {args.rows:,} rows, {'quick' if args.quick else 'full'} run")

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = prepare_data(data_dir, args.rows)
    timings["duckdb_data"] = round(time.perf_counter() - t0, 1)
    tag = secrets.token_hex(4)
    dbs = Databases(f"chrono_bench_{tag}", f"chrono_bench_{tag}_copy")
    results: list[Result] = []
    facts: dict[str, Any] = {}
    step_s: dict[str, float] = {}
    setup_s: float | None = None
    copy_dir = run_dir / "data-copy"
    try:
        facts = setup_databases(dbs, data.baseline_db, timings)
        # each server its own DuckDB file (one writer process per file)
        t0 = time.perf_counter()
        shutil.copytree(data.data_dir, copy_dir, ignore=shutil.ignore_patterns("tmp", "*.wal", "bench-data.json"))
        timings["duckdb_file_copy"] = round(time.perf_counter() - t0, 1)
        specs = {
            "oltp": (data.data_dir, server_env(dbs.oltp_uri, dbs.oltp, plan.deadline_s)),
            "copy": (copy_dir, server_env(dbs.copy_uri, dbs.copy, plan.deadline_s)),
        }
        t0 = time.perf_counter()
        with running_servers(specs, run_dir) as servers:
            timings["servers_ready"] = round(time.perf_counter() - t0, 1)
            # Loaded after start-up: a server started over a database that already holds the
            # copies does not start (checked at the end, see probe_restart).
            t0 = time.perf_counter()
            facts["analytics_copies"] = copy_analytics(dbs.copy_uri, data.baseline_db, timings)
            timings["copy_total"] = round(time.perf_counter() - t0, 1)
            refresh_registry(servers["copy"])
            setup_s = round(time.perf_counter() - started, 1)
            log(f"set-up done in {setup_s:.0f} s")
            steps: list[tuple[str, Callable[[], list[Result]]]] = [
                ("B5", lambda: run_b5(servers, plan)),
                ("B6", lambda: run_b6(servers["oltp"], pg_uri(dbs.oltp, READER_ROLE), plan)),
                ("B7", lambda: run_b7(servers["oltp"], servers["copy"], pg_uri(dbs.copy, READER_ROLE), plan)),
            ]
            for name, step in steps:
                if name not in args.only:
                    continue
                t0 = time.perf_counter()
                try:
                    results += step()
                except Exception as exc:
                    traceback.print_exc()
                    results.append(_failed(name, exc))
                step_s[name] = round(time.perf_counter() - t0, 1)
                log(f"{name} took {step_s[name]:.0f} s")
                for server in servers.values():
                    server.process.check_alive()
        facts["restart_with_copies"] = probe_restart(copy_dir, specs["copy"][1], run_dir)
    finally:
        dbs.drop()
        shutil.rmtree(copy_dir, ignore_errors=True)

    meta = {
        "started": started_at,
        "rows": args.rows,
        "quick": args.quick,
        "only": sorted(args.only),
        "command": " ".join([f"{sys.executable} -m bench.postgres", *(sys.argv[1:] if argv is None else argv)]),
        "duration_s": round(time.perf_counter() - started, 1),
        "setup_s": setup_s,
        "setup_seconds": timings,
        "step_seconds": step_s,
        "plan": asdict(plan),
        "data_dir": str(data.data_dir),
        "server_command": server_command(),
        "databases": [dbs.oltp, dbs.copy],
        "machine": machine,
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "run_dir": str(run_dir),
        **facts,
    }
    markdown = common.write_results(results, meta, args.out_dir, name="postgres", render=render_markdown)
    print(markdown)
    log(f"wrote postgres.json and postgres.md to {args.out_dir}; {meta['duration_s']:.0f} s in total")
    return 1 if any(r.title == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
