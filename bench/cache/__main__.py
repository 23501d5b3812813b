"""Entry point of `python -m bench.cache`: runs B8-B11 and writes cache.json and cache.md."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

from bench import common
from bench.cache.codecs import run_b11
from bench.cache.harness import (
    BENCH_ROOT,
    DEFAULT_CODEC,
    REDIS_URL,
    CacheContext,
    CachePlan,
    delete_keys,
    seed_from_shared,
    server_set,
)
from bench.cache.l1_hit import run_b8
from bench.cache.l2_hit import run_b9
from bench.cache.large import run_b10
from bench.cache.report import render_markdown
from bench.common import RESULTS_DIR, Result, log, machine_info, prepare_data, server_command

GROUPS = ("B8", "B9", "B10", "B11")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cache", description="Chrono Flight result-cache benchmarks")
    parser.add_argument("--rows", type=int, help="demo CDX rows (default 10,000,000; 1,000,000 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1M rows, fewer repetitions")
    parser.add_argument("--only", help="comma-separated subset of B8,B9,B10,B11")
    parser.add_argument("--data-dir", type=Path, help="data directory (default: under the temp directory)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where cache.json/cache.md go")
    args = parser.parse_args(argv)
    only = {s.strip().upper() for s in args.only.split(",")} if args.only else set(GROUPS)
    if only - set(GROUPS):
        parser.error(f"unknown benchmark(s) {', '.join(sorted(only - set(GROUPS)))}; choose from {', '.join(GROUPS)}")
    args.only = only
    if args.rows is None:
        args.rows = 1_000_000 if args.quick else 10_000_000
    return args


def _failed(name: str, exc: BaseException) -> Result:
    message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return Result(name, "failed", "—", "—", None, "—", "—", False, 0, {"notes": message})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    started_at = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    machine = machine_info()
    plan = CachePlan.for_mode(args.quick)
    data_dir: Path = args.data_dir or BENCH_ROOT / f"cache-data-{args.rows}"
    run_dir = BENCH_ROOT / f"cache-run-{dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    prefix = f"bench-cache-{os.getpid()}-{int(time.time())}:"
    log(f"{machine['logical_cores']} cores, {args.rows:,} rows, {'quick' if args.quick else 'full'} run")

    if args.data_dir is None:
        seed_from_shared(data_dir, args.rows)
    data = prepare_data(data_dir, args.rows)
    data_ready_s = time.perf_counter() - started
    rclient = redis.Redis.from_url(REDIS_URL)
    rclient.ping()
    results: list[Result] = []
    timings: dict[str, float] = {}
    try:
        with server_set(data.data_dir, run_dir, prefix) as servers:
            ctx = CacheContext(args.rows, plan, servers, rclient, run_dir)
            steps: list[tuple[str, Callable[[CacheContext], list[Result]]]] = [
                ("B8", run_b8),
                ("B9", run_b9),
                ("B10", run_b10),
                ("B11", run_b11),
            ]
            for name, step in steps:
                if name not in args.only:
                    continue
                step_started = time.perf_counter()
                try:
                    results += step(ctx)
                except Exception as exc:
                    traceback.print_exc()
                    results.append(_failed(name, exc))
                timings[name] = round(time.perf_counter() - step_started, 1)
                log(f"{name} took {timings[name]:.0f} s")
                for server in servers.all():
                    server.check_alive()
    finally:
        deleted = delete_keys(rclient, prefix)
        rclient.close()
        log(f"deleted {deleted} Redis keys under {prefix}")

    command = "python -m bench.cache" + (
        f" --rows {args.rows}" if args.rows != (10**6 if args.quick else 10**7) else ""
    )
    meta = {
        "started": started_at,
        "command": command + (" --quick" if args.quick else ""),
        "rows": args.rows,
        "quick": args.quick,
        "only": sorted(args.only),
        "duration_s": round(time.perf_counter() - started, 1),
        "data_ready_s": round(data_ready_s, 1),
        "data_generation_s": data.generated_s,
        "step_seconds": timings,
        "data_dir": str(data.data_dir),
        "server_command": server_command(),
        "redis_url": REDIS_URL,
        "redis_key_prefix": prefix,
        "l2_default_codec": DEFAULT_CODEC,
        "plan": vars(plan),
        "machine": machine,
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "run_dir": str(run_dir),
    }
    markdown = common.write_results(results, meta, args.out_dir, name="cache", render=render_markdown)
    print(markdown)
    log(f"wrote cache.json and cache.md to {args.out_dir}; {meta['duration_s']:.0f} s in total")
    return 1 if any(r.title == "failed" for r in results) else 0  # a missed target is a result


if __name__ == "__main__":
    sys.exit(main())
