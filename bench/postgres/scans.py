"""B6: a 2M-row OLTP scan through the server vs in-process ADBC and psycopg into pandas."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable

import adbc_driver_postgresql.dbapi as pg

from bench.common import Result, fmt_rate, log, median
from bench.postgres.databases import SCAN_SQL, PgPlan
from bench.postgres.servers import Server

B6_ADBC_TARGET = 0.8
B6_PSYCOPG_TARGET = 2.0


def run_b6(server: Server, reader_uri: str, plan: PgPlan) -> list[Result]:
    import pandas as pd
    import psycopg

    command = {"sql": SCAN_SQL}

    adbc_conn = pg.connect(reader_uri, autocommit=True)
    psy_conn = psycopg.connect(reader_uri, autocommit=True)

    def adbc_arrow() -> tuple[float, int]:
        started = time.perf_counter()
        with adbc_conn.cursor() as cur:
            cur.execute(SCAN_SQL)
            table = cur.fetch_arrow_table()
        return time.perf_counter() - started, table.num_rows

    def psycopg_pandas() -> tuple[float, int]:
        started = time.perf_counter()
        with psy_conn.cursor() as cur:
            cur.execute(SCAN_SQL)
            rows = cur.fetchall()
            columns = [d.name for d in cur.description or ()]
        frame = pd.DataFrame(rows, columns=columns)
        return time.perf_counter() - started, len(frame)

    server_cpu: list[float] = []

    def flight_arrow() -> tuple[float, int]:
        cpu = server.process.cpu_seconds()
        seconds, table = server.timed(command)
        server_cpu.append(server.process.cpu_seconds() - cpu)
        return seconds, table.num_rows

    def flight_pandas() -> tuple[float, int]:
        started = time.perf_counter()
        frame = server.fetch(command).to_pandas()
        return time.perf_counter() - started, len(frame)

    sides: dict[str, Callable[[], tuple[float, int]]] = {
        "adbc_arrow": adbc_arrow,
        "flight_arrow": flight_arrow,
        "psycopg_pandas": psycopg_pandas,
        "flight_pandas": flight_pandas,
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    client_cpu: dict[str, list[float]] = {name: [] for name in sides}
    rows: dict[str, int] = {}
    try:
        route = server.route(command)
        log(f"B6: warm-up (route {route.get('engine')})")
        for name, side in sides.items():
            if name != "psycopg_pandas":  # 15 s or so; the table is hot from the other sides
                rows[name] = side()[1]
                gc.collect()
        server_cpu.clear()
        order = list(sides)
        for rep in range(plan.b6_reps):
            for name in order[rep % len(order) :] + order[: rep % len(order)]:  # rotate the first side
                cpu_started = time.process_time()
                seconds, n = sides[name]()
                client_cpu[name].append(time.process_time() - cpu_started)
                times[name].append(seconds)
                rows[name] = n
                gc.collect()
            last = ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items())
            log(f"B6 rep {rep + 1}/{plan.b6_reps}: {last}")
    finally:
        adbc_conn.close()
        psy_conn.close()
    n_rows = rows["flight_arrow"]
    if len(set(rows.values())) != 1:
        raise RuntimeError(f"B6: the sides fetched different row counts: {rows}")
    adbc_ratios = [a / f for a, f in zip(times["adbc_arrow"], times["flight_arrow"], strict=True)]
    psy_ratios = [p / f for p, f in zip(times["psycopg_pandas"], times["flight_pandas"], strict=True)]
    med = {k: median(v) for k, v in times.items()}
    common = {
        "seconds": times,
        "rows": n_rows,
        "route": route,
        "server_cpu_s_per_flight_scan": median(server_cpu),
        "client_cpu_s": {k: median(v) for k, v in client_cpu.items()},
        "server_cpu_s": server_cpu,
    }
    adbc_ratio, psy_ratio = median(adbc_ratios), median(psy_ratios)
    cpu = {k: median(v) for k, v in client_cpu.items()}
    return [
        Result(
            "B6",
            f"{n_rows:,}-row OLTP scan `{SCAN_SQL}` into pyarrow, vs in-process ADBC",
            f"in-process ADBC fetch_arrow_table: {fmt_rate(n_rows / med['adbc_arrow'])} ({med['adbc_arrow']:.2f} s)",
            f"Flight DoGet read_all: {fmt_rate(n_rows / med['flight_arrow'])} ({med['flight_arrow']:.2f} s)",
            adbc_ratio,
            f"{adbc_ratio:.2f}x",
            f">= {B6_ADBC_TARGET:.1f}x",
            adbc_ratio >= B6_ADBC_TARGET,
            plan.b6_reps,
            {
                **common,
                "ratios": adbc_ratios,
                "notes": "ratio = in-process seconds / Flight seconds (throughput ratio), median of paired "
                "repetitions; both as chrono_reader, one untimed warm-up each. CPU seconds per scan (medians, "
                f"PostgreSQL's backend not counted): in-process ADBC {cpu['adbc_arrow']:.2f}; Flight: server "
                f"{median(server_cpu):.2f} + client {cpu['flight_arrow']:.2f}, on the same {os.cpu_count()} cores "
                "as the PostgreSQL backend.",
            },
        ),
        Result(
            "B6",
            f"{n_rows:,}-row OLTP scan into pandas, vs psycopg",
            f"psycopg fetchall + DataFrame: {fmt_rate(n_rows / med['psycopg_pandas'])} ({med['psycopg_pandas']:.2f} s)",
            f"Flight read_all + to_pandas: {fmt_rate(n_rows / med['flight_pandas'])} ({med['flight_pandas']:.2f} s)",
            psy_ratio,
            f"{psy_ratio:.2f}x",
            f">= {B6_PSYCOPG_TARGET:.0f}x",
            psy_ratio >= B6_PSYCOPG_TARGET,
            plan.b6_reps,
            {
                "ratios": psy_ratios,
                "psycopg_client": f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__}), client-side cursor",
                "notes": "ratio = psycopg seconds / Flight seconds, both ending in a pandas DataFrame; psycopg "
                f"is not warmed up (the table is hot from the other sides). Client CPU seconds per scan: psycopg "
                f"{cpu['psycopg_pandas']:.2f}, Flight + to_pandas {cpu['flight_pandas']:.2f} (server "
                f"{median(server_cpu):.2f} more).",
            },
        ),
    ]
