"""PostgreSQL benchmarks of Chrono Flight: `python -m bench.postgres [--rows N] [--quick]`.

- B5: every named query of the catalogue on DuckDB vs the same query on PostgreSQL, over
  the same demo data, through the server with `"engine": "duckdb"` / `"engine": "postgres"`
  hints (the server translates the DuckDB-dialect SQL to PostgreSQL with sqlglot). The
  three analytics tables are copied into PostgreSQL with ADBC bulk ingest (COPY) from a
  copy of the DuckDB file, indexed on domain and project_id, vacuumed and analysed.
  Hybrid named queries run their own route (DuckDB over PostgreSQL fetches) against the
  same query entirely in PostgreSQL. Geometric-mean speed-up and per query; a query
  that does not translate or run on PostgreSQL is reported with its one-line error.
- B6: a 2M-row OLTP scan (PostgreSQL over ADBC) through the server vs in-process ADBC
  `fetch_arrow_table()`, and (into pandas) vs psycopg `fetchall()` into a DataFrame.
- B7: a hybrid join (projects from PostgreSQL, CDX statistics in DuckDB) through the
  server's hybrid route vs the same join entirely in PostgreSQL.

Two PostgreSQL databases are created for the run and dropped at its end: `<db>` holds the
OLTP demo rows (with it, a query joining projects and cdx_records is hybrid) and
`<db>_copy`, a clone of it plus the analytics tables (with it, such a query can run
entirely in PostgreSQL). One server runs over each, side by side, with the L1 cache and
warming off, and every command says `"cache": "bypass"`. Queries run as the read-only
role `chrono_reader`. Baseline and candidate are interleaved over the repetitions.
Writes bench/results/postgres.json and postgres.md and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi as pg
import duckdb
import pyarrow as pa
import pyarrow.flight as flight

from flight_server.catalog import NamedQuery, load_catalog
from flight_server.demo.oltp import seed_demo
from flight_server.engines import postgres_schema as oltp

from bench import common
from bench.common import (
    PROJECT_ROOT,
    RESULTS_DIR,
    SEED,
    FlightServer,
    Result,
    fmt_rate,
    log,
    machine_info,
    median,
    prepare_data,
    server_command,
)

PG_HOST = os.environ.get("BENCH_PG_HOST", "127.0.0.1:5432")
PG_ADMIN_DB = "postgres"
READER_ROLE = "chrono_reader"
ANALYTICS_TABLES = ("cdx_records", "content_analytics", "performance_metrics")
# What an operator would index for these queries: the filter and join columns.
PG_INDEXES = (
    "CREATE INDEX cdx_records_domain ON cdx_records (domain)",
    "CREATE INDEX cdx_records_project_id ON cdx_records (project_id)",
    "CREATE INDEX content_analytics_project_id ON content_analytics (project_id)",
    'CREATE INDEX performance_metrics_timestamp ON performance_metrics ("timestamp")',
)
SCAN_TABLE = "bench_scan_2m"
SCAN_ROWS = 2_000_000
SCAN_SQL = f"SELECT * FROM {SCAN_TABLE}"
B7_SQL = (
    "SELECT p.name, count(*) AS captures, sum(c.content_length) AS total_bytes "
    "FROM cdx_records c JOIN projects p ON p.id = c.project_id GROUP BY p.name ORDER BY p.name"
)
# Values for the required parameters of named queries (the rest keep their defaults).
NAMED_PARAMS: dict[str, Any] = {"domain": "example.com", "project_id": "proj-001"}
B5_TARGET = 10.0
B6_ADBC_TARGET = 0.8
B6_PSYCOPG_TARGET = 2.0


def pg_uri(database: str, user: str = "postgres") -> str:
    return f"postgresql://{user}@{PG_HOST}/{database}"


# -- plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgPlan:
    b5_reps: int
    b5_budget_s: float  # no new B5 repetition starts past this (at least two always run)
    b6_reps: int
    b7_reps: int
    deadline_s: float  # the servers' query deadline (PostgreSQL statement_timeout too)

    @classmethod
    def for_mode(cls, quick: bool) -> PgPlan:
        if quick:
            return cls(b5_reps=3, b5_budget_s=45.0, b6_reps=3, b7_reps=5, deadline_s=60.0)
        return cls(b5_reps=3, b5_budget_s=240.0, b6_reps=5, b7_reps=5, deadline_s=120.0)


# -- PostgreSQL set-up -------------------------------------------------------------------


def admin_execute(*statements: str) -> None:
    with pg.connect(pg_uri(PG_ADMIN_DB), autocommit=True) as conn, conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


def pg_execute(uri: str, *statements: str) -> None:
    with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


def pg_scalar(uri: str, sql: str) -> Any:
    with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
        return row[0] if row else None


@dataclass
class Databases:
    oltp: str  # OLTP demo rows only
    copy: str  # a clone of `oltp` plus the three analytics tables
    created: list[str] = field(default_factory=list)

    @property
    def oltp_uri(self) -> str:
        return pg_uri(self.oltp)

    @property
    def copy_uri(self) -> str:
        return pg_uri(self.copy)

    def drop(self) -> None:
        for name in reversed(self.created):
            try:
                admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                log(f"dropped database {name}")
            except Exception as exc:
                log(f"could not drop database {name}: {str(exc).splitlines()[0]}")
        self.created.clear()


def setup_databases(dbs: Databases, baseline_db: Path, timings: dict[str, float]) -> dict[str, Any]:
    """Create the OLTP database with the demo rows and the 2M-row table, then clone it.

    The analytics copies go into the clone later, once its server is up (see main).
    """
    facts: dict[str, Any] = {}
    started = time.perf_counter()
    admin_execute(f'CREATE DATABASE "{dbs.oltp}"')
    dbs.created.append(dbs.oltp)
    oltp.apply_schema(dbs.oltp_uri, PROJECT_ROOT / "schemas")
    with duckdb.connect(str(baseline_db), read_only=True) as duck:
        counts = seed_demo(dbs.oltp_uri, duck, seed=SEED)
    facts["oltp_rows"] = counts
    timings["seed_oltp"] = round(time.perf_counter() - started, 1)
    log(f"OLTP demo rows in {dbs.oltp} in {timings['seed_oltp']:.1f} s: {counts}")

    started = time.perf_counter()
    facts["scan_table"] = create_scan_table(dbs.oltp_uri, counts["scrape_pages"])
    timings["scan_table"] = round(time.perf_counter() - started, 1)
    log(f"{SCAN_TABLE}: {facts['scan_table']} in {timings['scan_table']:.1f} s")

    started = time.perf_counter()
    admin_execute(f'CREATE DATABASE "{dbs.copy}" TEMPLATE "{dbs.oltp}"')
    dbs.created.append(dbs.copy)
    timings["clone_database"] = round(time.perf_counter() - started, 1)
    facts["postgres_settings"] = pg_settings(dbs.oltp_uri)
    return facts


def create_scan_table(uri: str, scrape_pages: int) -> dict[str, Any]:
    """A 2M-row OLTP table with scrape_pages' columns (its rows, repeated when too few)."""
    copies = max(1, math.ceil(SCAN_ROWS / max(scrape_pages, 1)))
    pg_execute(
        uri,
        f"CREATE TABLE {SCAN_TABLE} AS "
        "SELECT s.id + k.k * (SELECT max(id) FROM scrape_pages) AS id, s.project_id, s.domain_id, "
        "s.original_url, s.status, s.created_at "
        f"FROM generate_series(0, {copies - 1}) AS k(k) CROSS JOIN scrape_pages AS s LIMIT {SCAN_ROWS}",
        f"ALTER TABLE {SCAN_TABLE} ADD PRIMARY KEY (id)",
        f"VACUUM ANALYZE {SCAN_TABLE}",
        f"GRANT SELECT ON {SCAN_TABLE} TO {READER_ROLE}",
    )
    rows = int(pg_scalar(uri, f"SELECT count(*) FROM {SCAN_TABLE}"))
    size = int(pg_scalar(uri, f"SELECT pg_total_relation_size('{SCAN_TABLE}')"))
    return {"rows": rows, "scrape_pages_rows": scrape_pages, "copies_of_scrape_pages": copies, "bytes": size}


def copy_analytics(uri: str, baseline_db: Path, timings: dict[str, float]) -> dict[str, Any]:
    """The three DuckDB tables into PostgreSQL: ADBC ingest from Arrow, indexes, VACUUM ANALYZE."""
    out: dict[str, Any] = {}
    with duckdb.connect(str(baseline_db), read_only=True) as duck, pg.connect(uri, autocommit=True) as conn:
        for table in ANALYTICS_TABLES:
            started = time.perf_counter()
            reader = duck.sql(f"SELECT * FROM {table}").to_arrow_reader(262_144)
            with conn.cursor() as cur:
                rows = cur.adbc_ingest(table, reader, mode="create")
            seconds = time.perf_counter() - started
            timings[f"ingest_{table}"] = round(seconds, 1)
            out[table] = {"rows": rows, "ingest_s": round(seconds, 1)}
            log(f"copied {table} into PostgreSQL: {rows:,} rows in {seconds:.1f} s")
        with conn.cursor() as cur:
            cur.execute(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'performance_metrics' AND column_name = 'dimensions'"
            )
            kind = cur.fetchone()
            if kind is not None and kind[0] not in ("json", "jsonb"):  # DuckDB JSON arrives as text
                cur.execute(
                    "ALTER TABLE performance_metrics ALTER COLUMN dimensions TYPE jsonb USING dimensions::jsonb"
                )
            started = time.perf_counter()
            for statement in PG_INDEXES:
                cur.execute(statement)
            timings["indexes"] = round(time.perf_counter() - started, 1)
            started = time.perf_counter()
            for table in ANALYTICS_TABLES:
                cur.execute(f"VACUUM ANALYZE {table}")
                cur.execute(f"GRANT SELECT ON {table} TO {READER_ROLE}")
            timings["vacuum_analyze"] = round(time.perf_counter() - started, 1)
            for table in ANALYTICS_TABLES:
                cur.execute(f"SELECT pg_table_size('{table}'), pg_indexes_size('{table}')")
                sizes = cur.fetchone()
                assert sizes is not None
                out[table] |= {"table_bytes": int(sizes[0]), "index_bytes": int(sizes[1])}
    out["indexes"] = list(PG_INDEXES)
    log(f"indexes in {timings['indexes']:.1f} s, VACUUM ANALYZE in {timings['vacuum_analyze']:.1f} s")
    return out


def pg_settings(uri: str) -> dict[str, str]:
    names = ("server_version", "shared_buffers", "work_mem", "max_parallel_workers_per_gather", "jit")
    with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        listed = ", ".join(f"'{n}'" for n in names)
        cur.execute(f"SELECT name, setting, unit FROM pg_settings WHERE name IN ({listed})")
        return {str(n): f"{s}{'' if u is None else ' ' + str(u)}" for n, s, u in cur.fetchall()}


# -- server calls --------------------------------------------------------------------------


class FlightFailure(Exception):
    """A command the server refused or failed, with its one-line message."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for marker in (". Detail:", ". gRPC client debug context"):
        text = text.split(marker, 1)[0]
    return " ".join(text.split())[:300]


@dataclass
class Server:
    name: str
    process: FlightServer
    client: flight.FlightClient
    options: flight.FlightCallOptions

    def fetch(self, command: Mapping[str, Any]) -> pa.Table:
        ticket = flight.Ticket(json.dumps({**command, "cache": "bypass"}).encode())
        try:
            return self.client.do_get(ticket, self.options).read_all()
        except pa.ArrowException as exc:
            raise FlightFailure(one_line(exc)) from None

    def timed(self, command: Mapping[str, Any]) -> tuple[float, pa.Table]:
        started = time.perf_counter()
        table = self.fetch(command)
        return time.perf_counter() - started, table

    def route(self, command: Mapping[str, Any]) -> dict[str, Any]:
        """The routing decision (GetFlightInfo app_metadata), without running the query."""
        descriptor = flight.FlightDescriptor.for_command(json.dumps({**command, "cache": "bypass"}).encode())
        try:
            info = self.client.get_flight_info(descriptor, self.options)
        except pa.ArrowException as exc:
            raise FlightFailure(one_line(exc)) from None
        meta = json.loads(info.endpoints[0].app_metadata or b"{}") if info.endpoints else {}
        if not meta:
            with contextlib.suppress(AttributeError, ValueError):
                meta = json.loads(info.app_metadata or b"{}")
        return {k: meta.get(k) for k in ("engine", "reason", "route")}


@contextlib.contextmanager
def running_servers(specs: Mapping[str, tuple[Path, dict[str, str]]], run_dir: Path) -> Iterator[dict[str, Server]]:
    processes: dict[str, FlightServer] = {}
    servers: dict[str, Server] = {}
    try:
        for name, (data_dir, env) in specs.items():
            processes[name] = FlightServer(data_dir, run_dir / f"flight_server_{name}.log", env)
        for name, process in processes.items():
            ready = process.wait_ready()
            log(f"server {name} ready in {ready:.1f} s at {process.location} (pid {process.pid})")
            timeout = float(specs[name][1]["FLIGHT_DUCKDB__QUERY_DEADLINE_S"]) + 60
            servers[name] = Server(
                name, process, flight.connect(process.location), flight.FlightCallOptions(timeout=timeout)
            )
        yield servers
    finally:
        for server in servers.values():
            with contextlib.suppress(Exception):
                server.client.close()
        for process in processes.values():
            process.stop()


def server_env(db_uri_owner: str, db_name: str, deadline_s: float) -> dict[str, str]:
    return {
        "FLIGHT_POSTGRES__URI": db_uri_owner,
        "FLIGHT_POSTGRES__READER_URI": pg_uri(db_name, READER_ROLE),
        "FLIGHT_CACHE__L1_MAX_ENTRIES": "0",
        "FLIGHT_CACHE__WARM_TOP_N": "0",
        "FLIGHT_DUCKDB__MEMORY_LIMIT": "6GB",
        "FLIGHT_DUCKDB__QUERY_DEADLINE_S": str(int(deadline_s)),
    }


def refresh_registry(server: Server) -> None:
    """Make the server's table registry re-read the engines' tables.

    The registry refreshes when a query names a table it does not know; the query itself
    then fails (no engine has the table), which is expected.
    """
    with contextlib.suppress(FlightFailure):
        server.route({"sql": "SELECT * FROM chrono_bench_registry_refresh"})
    route = server.route({"sql": "SELECT count(*) FROM cdx_records", "engine": "postgres"})
    if route.get("engine") != "postgres":
        raise RuntimeError(f"the copy server does not see cdx_records in PostgreSQL: {route}")


def probe_restart(data_dir: Path, env: dict[str, str], run_dir: Path) -> dict[str, Any]:
    """Start a server over the database holding the copies: does it come up?"""
    process = FlightServer(data_dir, run_dir / "flight_server_restart.log", env)
    try:
        ready = process.wait_ready(timeout_s=120)
        outcome: dict[str, Any] = {"started": True, "ready_s": round(ready, 1)}
    except (RuntimeError, TimeoutError) as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        outcome = {"started": False, "error": lines[-1][:400] if lines else one_line(exc)}
    finally:
        process.stop()
    log(f"restart over the database with the copies: {outcome}")
    return outcome


# -- B5 ------------------------------------------------------------------------------------


@dataclass
class B5Case:
    query: NamedQuery
    params: dict[str, Any]
    candidate_server: str  # which server runs the candidate
    candidate_engine: str  # "duckdb" (hint) or "auto" (the hybrid route)
    candidate_route: str = ""
    baseline_route: str = ""
    candidate_error: str | None = None
    baseline_error: str | None = None
    candidate_s: list[float] = field(default_factory=list)
    baseline_s: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    rows: tuple[int, int] = (0, 0)
    schema_differs: list[str] = field(default_factory=list)
    values_differ: str = ""

    @property
    def ok(self) -> bool:
        return self.candidate_error is None and self.baseline_error is None

    def command(self, engine: str) -> dict[str, Any]:
        return {"query": self.query.name, "params": self.params, "engine": engine}


def b5_cases(servers: Mapping[str, Server]) -> list[B5Case]:
    cases = []
    for query in load_catalog(PROJECT_ROOT / "schemas" / "catalog.toml"):
        params = {p.name: NAMED_PARAMS[p.name] for p in query.params if p.required}
        if query.engine == "hybrid":
            cases.append(B5Case(query, params, "oltp", "auto"))
        else:
            cases.append(B5Case(query, params, "copy", "duckdb"))
    return cases


def _plain(value: Any) -> Any:
    """A cell comparable across engines: numbers (PostgreSQL numeric comes as text) as float."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float | Decimal):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def result_difference(a: pa.Table, b: pa.Table) -> str:
    """'' when both results hold the same values (floats to 1e-6 relative), else the first difference."""
    if a.num_rows != b.num_rows:
        return f"{a.num_rows} rows vs {b.num_rows}"
    if a.column_names != b.column_names:
        return f"columns {a.column_names} vs {b.column_names}"
    for i, (row_a, row_b) in enumerate(zip(a.to_pylist(), b.to_pylist(), strict=True)):
        for name in a.column_names:
            x, y = _plain(row_a[name]), _plain(row_b[name])
            if isinstance(x, float) and isinstance(y, float):
                if math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(x) and math.isnan(y)):
                    continue
            elif x == y:
                continue
            return f"row {i}, {name}: {row_a[name]!r:.60} vs {row_b[name]!r:.60}"
    return ""


def _schema_differences(a: pa.Schema, b: pa.Schema) -> list[str]:
    out = []
    for field_a in a:
        if field_a.name not in b.names:
            out.append(f"{field_a.name}: missing on PostgreSQL")
        elif b.field(field_a.name).type != field_a.type:
            out.append(f"{field_a.name}: {field_a.type} vs {b.field(field_a.name).type}")
    return out


def run_b5(servers: Mapping[str, Server], plan: PgPlan) -> list[Result]:
    cases = b5_cases(servers)
    copy = servers["copy"]
    log(f"B5: {len(cases)} named queries; warm-up and error check")
    for case in cases:
        candidate = servers[case.candidate_server]
        cand_table = base_table = None
        try:
            case.candidate_route = str(candidate.route(case.command(case.candidate_engine)).get("engine"))
            cand_table = candidate.fetch(case.command(case.candidate_engine))
        except FlightFailure as exc:
            case.candidate_error = str(exc)
        try:
            case.baseline_route = str(copy.route(case.command("postgres")).get("engine"))
            base_table = copy.fetch(case.command("postgres"))
        except FlightFailure as exc:
            case.baseline_error = str(exc)
        if cand_table is not None and base_table is not None:
            case.rows = (cand_table.num_rows, base_table.num_rows)
            case.schema_differs = _schema_differences(cand_table.schema, base_table.schema)
            case.values_differ = result_difference(cand_table, base_table)
        status = "ok" if case.ok else f"candidate: {case.candidate_error} / postgres: {case.baseline_error}"
        log(f"  {case.query.name}: {status}")
    runnable = [c for c in cases if c.ok]
    started = time.perf_counter()
    reps = 0
    while reps < plan.b5_reps:
        rep_started = time.perf_counter()
        for i, case in enumerate(runnable):
            candidate = servers[case.candidate_server]
            pairs = [
                (candidate, case.command(case.candidate_engine), case.candidate_s),
                (copy, case.command("postgres"), case.baseline_s),
            ]
            if (reps + i) % 2:  # alternate which side goes first
                pairs.reverse()
            for server, command, out in pairs:
                out.append(server.timed(command)[0])
            case.ratios.append(case.baseline_s[-1] / case.candidate_s[-1])
        reps += 1
        rep_s = time.perf_counter() - rep_started
        log(f"B5 rep {reps}/{plan.b5_reps} in {rep_s:.1f} s")
        if reps >= 2 and time.perf_counter() - started + rep_s > plan.b5_budget_s:
            log(f"B5: stopping after {reps} repetitions (budget {plan.b5_budget_s:.0f} s)")
            break
    return b5_results(cases, reps)


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def b5_results(cases: Sequence[B5Case], reps: int) -> list[Result]:
    duck = [c for c in cases if c.ok and c.candidate_engine == "duckdb"]
    hybrid = [c for c in cases if c.ok and c.candidate_engine != "duckdb"]
    failed = [c for c in cases if not c.ok]
    gm = geomean([median(c.ratios) for c in duck])
    gm_all = geomean([median(c.ratios) for c in duck + hybrid])
    base_gm = geomean([median(c.baseline_s) for c in duck])
    cand_gm = geomean([median(c.candidate_s) for c in duck])
    failures = {
        c.query.name: {"candidate_error": c.candidate_error, "postgres_error": c.baseline_error} for c in failed
    }
    summary = Result(
        benchmark="B5",
        title=f"named catalogue, geometric mean over {len(duck)} queries that ran on both engines",
        baseline=f"PostgreSQL (engine hint, sqlglot translation): geomean {_ms(base_gm)}",
        candidate=f"DuckDB (engine hint): geomean {_ms(cand_gm)}",
        ratio=gm,
        ratio_text=f"{gm:.1f}x",
        target=f">= {B5_TARGET:.0f}x (seed claims 5-10x)",
        met=gm >= B5_TARGET if duck else None,
        repetitions=reps,
        details={
            "geomean_including_hybrid": gm_all,
            "queries_measured": [c.query.name for c in duck + hybrid],
            "excluded_failures": failures,
            "notes": "ratio = PostgreSQL time / DuckDB time per query, median of the per-repetition ratios, "
            "then the geometric mean. Both engines behind the same server process; the first call of each side "
            f"is an untimed warm-up (and the error check). {len(failed)} queries excluded (errors in the "
            "table). "
            + (
                f"With the {len(hybrid)} hybrid queries (their own route vs all in PostgreSQL) the geomean is "
                f"{gm_all:.1f}x."
                if hybrid
                else "No hybrid query ran entirely in PostgreSQL, so none is in a geomean."
            ),
        },
    )
    rows = [summary]
    for case in cases:
        label = f"{case.query.name} ({'hybrid route' if case.candidate_engine != 'duckdb' else 'duckdb'})"
        if not case.ok:
            side = "hybrid" if case.candidate_engine != "duckdb" else "DuckDB"
            rows.append(
                Result(
                    "B5",
                    label,
                    f"PostgreSQL failed: {case.baseline_error}" if case.baseline_error else "PostgreSQL ran",
                    f"{side} failed: {case.candidate_error}" if case.candidate_error else f"{side} ran",
                    None,
                    "excluded",
                    "—",
                    None,
                    0,
                    {
                        "candidate_error": case.candidate_error,
                        "postgres_error": case.baseline_error,
                        "candidate_route": case.candidate_route,
                        "baseline_route": case.baseline_route,
                    },
                )
            )
            continue
        ratio = median(case.ratios)
        notes = []
        if case.values_differ:
            notes.append(f"answers differ (DuckDB vs PostgreSQL): {case.values_differ}")
        if case.schema_differs:
            notes.append("types differ: " + ", ".join(case.schema_differs))
        rows.append(
            Result(
                "B5",
                label,
                f"PostgreSQL {_ms(median(case.baseline_s))}",
                f"{'hybrid' if case.candidate_engine != 'duckdb' else 'DuckDB'} {_ms(median(case.candidate_s))}",
                ratio,
                f"{ratio:.1f}x",
                f">= {B5_TARGET:.0f}x" if case.candidate_engine == "duckdb" else "— (hybrid, not in geomean)",
                ratio >= B5_TARGET if case.candidate_engine == "duckdb" else None,
                len(case.ratios),
                {
                    "candidate_s": case.candidate_s,
                    "postgres_s": case.baseline_s,
                    "ratios": case.ratios,
                    "rows": list(case.rows),
                    "params": case.params,
                    "candidate_route": case.candidate_route,
                    "baseline_route": case.baseline_route,
                    "type_differences": case.schema_differs,
                    "same_answers": not case.values_differ,
                    "notes": "; ".join(notes),
                },
            )
        )
    return rows


# -- B6 ------------------------------------------------------------------------------------


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


# -- B7 ------------------------------------------------------------------------------------


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
        base_label = f"in PostgreSQL, in-process ADBC (server route failed: {server_error}): {_ms(median(base_s))}"
    else:
        base_label = f"all in PostgreSQL through the server (engine hint): {_ms(median(base_s))}"
    return [
        Result(
            "B7",
            "hybrid join: projects (PostgreSQL) x CDX statistics (DuckDB), `" + B7_SQL + "`",
            base_label,
            f"hybrid route (projects fetched, joined in DuckDB): {_ms(median(cand_s))}",
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


# -- results -------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(results: Sequence[Result], meta: Mapping[str, Any]) -> str:
    machine = meta.get("machine", {})
    lines = [
        "# Chrono Flight PostgreSQL benchmarks (B5-B7)",
        "",
        f"Run {meta.get('started', '')}, {meta.get('rows', 0):,} demo CDX rows, "
        f"mode {'quick' if meta.get('quick') else 'full'}, total {meta.get('duration_s', 0):.0f} s "
        f"(set-up {meta.get('setup_s', 0):.0f} s). Machine: {machine.get('logical_cores')} logical cores "
        f"({machine.get('cpu_model', '?')}), {machine.get('memory_gb')} GB RAM, load average at start "
        f"{machine.get('load_avg_at_start')}, at end {meta.get('load_avg_at_end')}. PostgreSQL "
        f"{meta.get('postgres_settings', {}).get('server_version', '?')} with its settings unchanged "
        f"({', '.join(f'{k} {v}' for k, v in meta.get('postgres_settings', {}).items() if k != 'server_version')}). "
        "Baseline and candidate run side by side, interleaved; figures are medians over the repetitions, "
        "ratios are medians of the per-repetition ratios (baseline time / candidate time).",
        "",
        f"Command: `{meta.get('command', '')}`",
        "",
        "| benchmark | baseline | candidate | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        met = "—" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            f"| {_cell(r.benchmark + ' ' + r.title)} | {_cell(r.baseline)} | {_cell(r.candidate)} | "
            f"{_cell(r.ratio_text)} | {_cell(r.target)} | {met} |"
        )
    lines += ["", "## Details", ""]
    for r in results:
        notes = r.details.get("notes")
        if notes:
            lines.append(f"- **{r.benchmark}** {r.title} ({r.repetitions} reps): {notes}")
    restart = meta.get("restart_with_copies")
    if restart:
        lines.append(
            "- Restarting a server over the database that holds the analytics copies: "
            + ("it starts." if restart.get("started") else f"it does not start: `{restart.get('error')}`")
        )
    lines += ["", "## Set-up", ""]
    for key in ("setup_seconds", "analytics_copies", "scan_table", "oltp_rows"):
        lines.append(f"- {key}: {json.dumps(meta.get(key), default=str)}")
    lines.append("")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------


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
