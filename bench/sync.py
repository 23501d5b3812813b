"""B16, change data capture: `python -m bench.sync [--rows N] [--seconds S] [--rate R] [--quick]`.

A steady writer changes `scrape_pages` in PostgreSQL at `--rate` rows per second (one
transaction every 200 ms: inserts, updates of status, deletes of its own earlier rows)
while the server's sync applies them to its DuckDB replica. Measured side by side:

- applied per second vs written per second (the sync's own counter over the window);
- replica lag seen from outside: a reader asks the server, every 50 ms, for the newest
  writer row in the replica (`max_staleness_s` large, cache bypassed); a transaction's
  lag is the time from its commit until that reader first sees it. p50 and p99 over the
  run, against the 2 s target; the sync's own per-change lag percentiles beside them;
- an analytical query over scrape_pages and projects on the replica vs the same query
  on PostgreSQL (engine hint), interleaved, after the writer stops.

The PostgreSQL database is made for the run and dropped at its end.
Writes bench/results/sync.json and sync.md and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import secrets
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi as pg
import duckdb
import pyarrow.flight as flight

from flight_server.demo.oltp import seed_demo
from flight_server.engines import postgres_schema as oltp

from bench import common
from bench.common import RESULTS_DIR, SEED, FlightServer, Result, log, machine_info, median, percentile, prepare_data

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
ANALYTICAL = (
    "SELECT p.name, s.status, count(*) AS pages, min(s.created_at) AS first_page FROM scrape_pages s "
    "JOIN projects p ON p.id = s.project_id GROUP BY p.name, s.status ORDER BY p.name, s.status"
)


def _pg(uri: str, sql: str) -> list[tuple[Any, ...]]:
    with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall() if cur.description else []


class Writer(threading.Thread):
    """Every 200 ms commits the rows due at `rate` (more after a slow tick); remembers each commit's newest id."""

    def __init__(self, uri: str, rate: int, project: str, domain_id: int) -> None:
        super().__init__(daemon=True)
        self._uri, self._rate = uri, rate
        self._project, self._domain = project, domain_id
        self.stop = threading.Event()
        self.commits: list[tuple[float, int]] = []  # (commit time, newest inserted id)
        self.rows_changed = 0
        self.began = 0.0  # when the first transaction started (after reading the existing ids)

    def run(self) -> None:
        rng = random.Random(SEED)
        with pg.connect(self._uri, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT id FROM scrape_pages")
            existing = [int(r[0]) for r in cur.fetchall()]
            mine: deque[int] = deque()  # rows this writer inserted, oldest first: the ones it deletes
            started = tick = time.monotonic()
            self.began = time.time()
            while not self.stop.is_set():
                due = max(10, int(self._rate * (time.monotonic() - started + 0.2)) - self.rows_changed)
                inserts, updates, deletes = due // 2, due * 2 // 5, due - due // 2 - due * 2 // 5
                cur.execute("BEGIN")
                cur.execute(
                    "INSERT INTO scrape_pages (project_id, domain_id, original_url, status) "
                    f"SELECT '{self._project}', {self._domain}, 'https://bench.example/' || g, 'pending' "
                    f"FROM generate_series(1, {inserts}) g RETURNING id"
                )
                added = [int(r[0]) for r in cur.fetchall()]
                mine.extend(added)
                changed = ",".join(str(i) for i in rng.sample(existing, updates))
                cur.execute(
                    "UPDATE scrape_pages SET status = CASE status WHEN 'pending' THEN 'completed' ELSE 'pending' END "
                    f"WHERE id IN ({changed})"
                )
                removed = [mine.popleft() for _ in range(min(deletes, len(mine)))]
                gone = ",".join(str(i) for i in removed)
                if gone:
                    cur.execute(f"DELETE FROM scrape_pages WHERE id IN ({gone})")
                newest = max(added)
                cur.execute("COMMIT")
                self.commits.append((time.time(), newest))
                self.rows_changed += len(added) + updates + len(removed)
                tick += 0.2
                self.stop.wait(max(0.0, tick - time.monotonic()))


class Reader(threading.Thread):
    """Polls the replica for the newest writer row; records when each id was first seen."""

    def __init__(self, location: str) -> None:
        super().__init__(daemon=True)
        self._client = flight.connect(location)
        self.stop = threading.Event()
        self.seen: list[tuple[float, int]] = []
        self.not_replica: list[str] = []  # reasons given when a poll was not answered by the replica

    def run(self) -> None:
        command = json.dumps({"sql": "SELECT max(id) AS m FROM scrape_pages", "max_staleness_s": 600,
                              "cache": "bypass"}).encode()  # fmt: skip
        while not self.stop.is_set():
            reader = self._client.do_get(flight.Ticket(command))
            chunk = reader.read_chunk()
            metadata = json.loads(chunk.app_metadata.to_pybytes())
            if not metadata["replica"]:
                self.not_replica.append(metadata["reason"])
            self.seen.append((time.time(), int(chunk.data.column(0)[0].as_py() or 0)))
            self.stop.wait(0.05)


def _lags(commits: list[tuple[float, int]], seen: list[tuple[float, int]]) -> list[float]:
    out, j = [], 0
    for committed, newest in commits:
        while j < len(seen) and (seen[j][1] < newest or seen[j][0] < committed):
            j += 1
        if j == len(seen):
            break
        out.append(seen[j][0] - committed)
    return out


def _action(client: flight.FlightClient, name: str) -> Any:
    return json.loads(next(iter(client.do_action(flight.Action(name, b"")))).body.to_pybytes())


def _timed(client: flight.FlightClient, command: dict[str, Any]) -> tuple[float, bool]:
    started = time.perf_counter()
    reader = client.do_get(flight.Ticket(json.dumps(command).encode()))
    first = reader.read_chunk()
    reader.read_all()
    return time.perf_counter() - started, bool(json.loads(first.app_metadata.to_pybytes())["replica"])


def _catch_up(client: flight.FlightClient, uri: str, rows: int) -> dict[str, float]:
    """A burst of `rows` inserts in one statement; seconds until the replica has them all."""
    before = _action(client, "sync.status")["counters"]["changes_applied"]
    _pg(uri, "INSERT INTO audit_logs (action, details) SELECT 'bench.burst', jsonb_build_object('i', g) "
             f"FROM generate_series(1, {rows}) g")  # fmt: skip
    started = time.perf_counter()
    while _action(client, "sync.status")["counters"]["changes_applied"] - before < rows:
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def run(location: str, uri: str, seconds: float, rate: int, reps: int) -> list[Result]:
    client = flight.connect(location)
    project, domain = _pg(uri, "SELECT project_id, id FROM domains ORDER BY id LIMIT 1")[0]
    before = _action(client, "sync.status")["counters"]["changes_applied"]
    writer, reader = Writer(uri, rate, str(project), int(domain)), Reader(location)
    writer.start()
    reader.start()
    while not writer.began:
        time.sleep(0.01)
    time.sleep(seconds)
    writer.stop.set()
    writer.join()
    window = time.time() - writer.began
    time.sleep(2.0)  # let the last commits arrive before the reader stops
    reader.stop.set()
    reader.join()
    status = _action(client, "sync.status")
    applied = status["counters"]["changes_applied"] - before
    lags = _lags(writer.commits, reader.seen)
    written_rate = writer.rows_changed / window
    p50, p99 = percentile(lags, 50), percentile(lags, 99)
    burst = _catch_up(client, uri, 100_000)
    kept = applied / writer.rows_changed
    results = [
        Result("B16", "changes applied vs written under a steady writer", f"written {written_rate:,.0f} rows/s",
               f"applied {applied / window:,.0f} rows/s", kept, f"{kept:.3f} (all applied by the end)",
               ">= 0.99 of the written rows applied; backlog capacity in details", kept >= 0.99,
               len(writer.commits),
               {"window_s": window, "rows_changed": writer.rows_changed, "rows_applied": applied,
                "backlog_catch_up": burst, "sync_counters": status["counters"],
                "notes": f"a 100,000-row backlog was applied at {burst['rows_per_s']:,.0f} rows/s"}),
        Result("B16", "replica lag p99 (commit to visible through the server)", "2 s target", "p99 lag",
               p99 / 2.0, f"p50 {p50:.3f} s, p99 {p99:.3f} s", "p99 < 2 s", p99 < 2.0, len(lags),
               {"sync_reported_lag_s": status["lag_s"], "reader_polls": len(reader.seen),
                "reader_polls_not_on_replica": len(reader.not_replica), "why_not": sorted(set(reader.not_replica)),
                "lags_max_s": max(lags) if lags else None,
                "notes": "includes up to 50 ms of polling interval and a Flight round trip"}),
    ]  # fmt: skip
    replica_cmd = {"sql": ANALYTICAL, "max_staleness_s": 600, "cache": "bypass"}
    postgres_cmd = {"sql": ANALYTICAL, "engine": "postgres", "cache": "bypass"}
    _timed(client, replica_cmd), _timed(client, postgres_cmd)  # warm both
    ours, theirs, ratios, on_replica = [], [], [], True
    for _ in range(reps):
        t_pg, _ = _timed(client, postgres_cmd)
        t_replica, replica = _timed(client, replica_cmd)
        on_replica &= replica
        theirs.append(t_pg), ours.append(t_replica), ratios.append(t_replica / t_pg)
    ratio = median(ratios)
    results.append(
        Result("B16", "analytical query: replica vs PostgreSQL", f"PostgreSQL {median(theirs) * 1000:.1f} ms",
               f"replica {median(ours) * 1000:.1f} ms", ratio, f"{ratio:.3f}", "< 1.0", ratio < 1.0 and on_replica,
               reps, {"sql": ANALYTICAL, "replica_ms": [t * 1000 for t in ours],
                      "postgres_ms": [t * 1000 for t in theirs], "served_from_replica": on_replica})
    )  # fmt: skip
    results.append(_capture_cost(uri, reps))
    client.close()
    return results


_WRITE = (
    "INSERT INTO {t} (project_id, domain_id, original_url, status) SELECT project_id, domain_id, "
    "'https://cost.example/' || g, 'pending' FROM (SELECT project_id, domain_id FROM {t} LIMIT 1) s, "
    "generate_series(1, 500) g",
    "UPDATE {t} SET status = 'completed' WHERE id IN (SELECT id FROM {t} ORDER BY id LIMIT 400)",
    "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE original_url LIKE 'https://cost.example/%' LIMIT 100)",
)


def _capture_cost(uri: str, reps: int) -> Result:
    """The same write transaction on scrape_pages with its capture triggers on and off, alternating.

    Run last: changes made while the triggers are off never reach the replica.
    """
    timings: dict[bool, list[float]] = {True: [], False: []}
    with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        for i in range(reps * 2 + 2):
            for captured in (True, False) if i % 2 else (False, True):
                cur.execute(f"ALTER TABLE scrape_pages {'ENABLE' if captured else 'DISABLE'} TRIGGER USER")
                started = time.perf_counter()
                cur.execute("BEGIN")
                for statement in _WRITE:
                    cur.execute(statement.format(t="scrape_pages"))
                cur.execute("COMMIT")
                if i >= 2:  # the first rounds warm up
                    timings[captured].append(time.perf_counter() - started)
        cur.execute("ALTER TABLE scrape_pages ENABLE TRIGGER USER")
    ratios = [a / b for a, b in zip(timings[True], timings[False], strict=True)]
    ratio = median(ratios)
    captured, plain = median(timings[True]) * 1000, median(timings[False]) * 1000
    return Result("B16", "cost of capture: a 1,000-row write transaction with the triggers on vs off",
                  f"triggers off {plain:.1f} ms", f"triggers on {captured:.1f} ms", ratio, f"{ratio:.2f}x",
                  "report", None, len(ratios),
                  {"statements": [s.format(t="scrape_pages") for s in _WRITE], "on_ms": timings[True],
                   "off_ms": timings[False]})  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sync", description="Chrono Flight B16 (sync)")
    parser.add_argument("--rows", type=int, default=200_000, help="demo CDX rows (scrape pages follow from them)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the writer runs")
    parser.add_argument("--rate", type=int, default=1000, help="rows changed per second by the writer")
    parser.add_argument("--reps", type=int, default=15, help="repetitions of the analytical query pair")
    parser.add_argument("--quick", action="store_true", help="10 s writer, 5 repetitions")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.reps = 10.0, 5
    started, started_at = time.perf_counter(), dt.datetime.now().astimezone().isoformat(timespec="seconds")
    root = Path(tempfile.gettempdir()) / "chrono-flight-bench"
    data = prepare_data(root / f"sync-data-{args.rows}", args.rows)
    run_dir = root / f"sync-run-{dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    database = f"chrono_bench_sync_{secrets.token_hex(4)}"
    uri = f"postgresql://postgres@127.0.0.1:5432/{database}"
    _pg(ADMIN, f'CREATE DATABASE "{database}"')
    try:
        oltp.apply_schema(uri, common.PROJECT_ROOT / "schemas")
        with duckdb.connect(str(data.baseline_db), read_only=True) as duck:
            counts = seed_demo(uri, duck, seed=SEED)
        log(f"PostgreSQL seeded: {counts['scrape_pages']:,} scrape pages")
        server = FlightServer(data.data_dir, run_dir / "server.log", {"FLIGHT_POSTGRES__URI": uri})
        try:
            server.wait_ready()
            with flight.connect(server.location) as client:
                while _action(client, "sync.status")["state"] != "running":
                    time.sleep(0.2)
            results = run(server.location, uri, args.seconds, args.rate, args.reps)
        finally:
            server.stop()
    finally:
        _pg(ADMIN, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    meta = {
        "started": started_at,
        "rows": args.rows,
        "quick": args.quick,
        "command": " ".join([f"{sys.executable} -m bench.sync", *(sys.argv[1:] if argv is None else argv)]),
        "duration_s": round(time.perf_counter() - started, 1),
        "writer": {"seconds": args.seconds, "rate_rows_per_s": args.rate},
        "scrape_pages": counts["scrape_pages"],
        "machine": machine_info(),
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
    }

    def render(rows: Sequence[Result], info: Any) -> str:
        return common.render_markdown(rows, info).replace("core benchmarks", "sync benchmark (B16)", 1)

    markdown = common.write_results(results, meta, args.out_dir, name="sync", render=render)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
