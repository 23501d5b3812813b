"""B7: a hybrid join through the server's hybrid route vs the same join entirely in PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import adbc_driver_postgresql.dbapi as pg
import pyarrow as pa

from bench.common import Result, fmt_ms, log, median
from bench.postgres.catalogue import result_difference
from bench.postgres.databases import PgPlan
from bench.postgres.servers import FlightFailure, Server

B7_SQL = (
    "SELECT p.name, count(*) AS captures, sum(c.content_length) AS total_bytes "
    "FROM cdx_records c JOIN projects p ON p.id = c.project_id GROUP BY p.name ORDER BY p.name"
)


def run_b7(hybrid: Server, copy: Server, copy_reader_uri: str, plan: PgPlan) -> list[Result]:
    """The hybrid route vs the same join in PostgreSQL: through the server's postgres route,
    or, when that route cannot run the query, in-process ADBC on the same database."""
    cand_cmd = {"sql": B7_SQL}
    base_cmd = {"sql": B7_SQL, "engine": "postgres"}
    cand_route = hybrid.route(cand_cmd)
    if cand_route.get("engine") != "hybrid":
        raise RuntimeError(f"B7: the candidate was not routed hybrid: {cand_route}")
    server_error: str | None = None
    try:
        base_route: dict[str, Any] = copy.route(base_cmd)
        copy.fetch(base_cmd)
    except FlightFailure as exc:
        server_error, base_route = str(exc), {}
        log(f"B7: the server's postgres route fails ({server_error}); baseline = in-process ADBC")
    adbc_conn = pg.connect(copy_reader_uri, autocommit=True) if server_error else None

    def baseline() -> tuple[float, pa.Table]:
        if adbc_conn is None:
            return copy.timed(base_cmd)
        started = time.perf_counter()
        with adbc_conn.cursor() as cur:
            cur.execute(B7_SQL)
            table = cur.fetch_arrow_table()
        return time.perf_counter() - started, table

    def candidate() -> tuple[float, pa.Table]:
        return hybrid.timed(cand_cmd)

    cand_s: list[float] = []
    base_s: list[float] = []
    try:
        log(f"B7: warm-up (candidate route {cand_route.get('engine')})")
        difference = result_difference(candidate()[1], baseline()[1])
        for rep in range(plan.b7_reps):
            pairs = [(candidate, cand_s), (baseline, base_s)]
            if rep % 2:
                pairs.reverse()
            for run, out in pairs:
                out.append(run()[0])
            log(f"B7 rep {rep + 1}/{plan.b7_reps}: hybrid {cand_s[-1]:.3f} s, PostgreSQL {base_s[-1]:.3f} s")
    finally:
        if adbc_conn is not None:
            adbc_conn.close()
    ratios = [b / c for b, c in zip(base_s, cand_s, strict=True)]
    ratio = median(ratios)
    if server_error:
        base_label = f"in PostgreSQL, in-process ADBC (server route failed: {server_error}): {fmt_ms(median(base_s))}"
    else:
        base_label = f"all in PostgreSQL through the server (engine hint): {fmt_ms(median(base_s))}"
    return [
        Result(
            "B7",
            "hybrid join: projects (PostgreSQL) x CDX statistics (DuckDB), `" + B7_SQL + "`",
            base_label,
            f"hybrid route (projects fetched, joined in DuckDB): {fmt_ms(median(cand_s))}",
            ratio,
            f"{ratio:.1f}x",
            "— (none stated)",
            None,
            plan.b7_reps,
            {
                "hybrid_s": cand_s,
                "postgres_s": base_s,
                "ratios": ratios,
                "candidate_route": cand_route,
                "baseline_route": base_route,
                "server_postgres_route_error": server_error,
                "same_answers": not difference,
                "answer_difference": difference,
                "notes": "ratio = PostgreSQL seconds / hybrid seconds, median of paired repetitions"
                + (f"; answers differ: {difference}" if difference else "; same answers")
                + (
                    f". The server's own postgres route fails on this query ({server_error}), so the baseline "
                    "runs the same SQL over ADBC in this process, as chrono_reader, on the database with the copy."
                    if server_error
                    else "."
                ),
            },
        )
    ]
