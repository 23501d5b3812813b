"""PostgreSQL set-up of B5-B7: the run's databases, the 2M-row scan table, the analytics copies."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi as pg
import duckdb

from flight_server.demo.oltp import seed_demo
from flight_server.engines import postgres_schema as oltp

from bench.common import PROJECT_ROOT, SEED, log

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
