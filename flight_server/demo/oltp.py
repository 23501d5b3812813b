"""Deterministic demo rows for the OLTP tables of schemas/postgres.sql.

`seed_demo` fills the OLTP tables consistently with the DuckDB demo data of
`demo.analytics` (the same project ids, domains and captures), computing the rows in
DuckDB and loading them over ADBC bulk ingest (COPY), so hybrid answers are meaningful.
It replaces every row in one transaction: nothing is visible until it commits. The demo
users' password is `DEMO_PASSWORD`, hashed with a salt derived from the seed and the
user's email, so the same seed gives the same rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable

import adbc_driver_postgresql.dbapi as pg
import duckdb
import pyarrow as pa

from flight_server.demo.analytics import DEMO_PROJECTS, demo_domains
from flight_server.security.auth import hash_password

logger = logging.getLogger(__name__)

DEMO_PASSWORD = "chrono-demo"  # noqa: S105 - the documented password of the demo users
OLTP_TABLES = (
    "users", "user_sessions", "projects", "domains", "scrape_pages", "project_pages", "admin_settings", "audit_logs",
)  # fmt: skip


_SCRAPE_PAGES_SQL = """
SELECT CAST(substr(c.id, 5) AS BIGINT) AS id, c.project_id, d.domain_id, c.original_url,
       CASE WHEN a.page_id IS NOT NULL THEN 'completed'
            WHEN c.status_code >= 400 THEN 'failed'
            WHEN hash(c.id, 'status') % 10 < 2 THEN 'pending'
            WHEN hash(c.id, 'status') % 10 < 3 THEN 'in_progress'
            ELSE 'skipped' END AS status,
       c.created_at::TIMESTAMPTZ AS created_at
FROM cdx_records c
JOIN seed_domains d ON d.domain = c.domain
LEFT JOIN content_analytics a ON a.page_id = c.id
WHERE c.mime_type = 'text/html' AND c.project_id IS NOT NULL
"""

_PROJECT_PAGES_SQL = """
SELECT row_number() OVER (ORDER BY id) AS id, project_id, id AS page_id,
       list_slice(['news', 'politics', 'tech', 'science', 'review', 'archive', 'featured'],
                  1 + CAST(hash(id, 'tag') % 4 AS INTEGER), 3 + CAST(hash(id, 'tag2') % 3 AS INTEGER)) AS tags,
       ['unreviewed', 'approved', 'rejected', 'flagged'][1 + CAST(hash(id, 'review') % 4 AS INTEGER)] AS review_status
FROM seed_pages WHERE status = 'completed' AND hash(id, 'pp') % 3 = 0
"""

_AUDIT_SQL = """
SELECT i + 1 AS id, 1 + CAST(hash(i, 'user') % $users AS BIGINT) AS user_id,
       ['login', 'logout', 'project.update', 'scrape.start', 'scrape.finish', 'export.csv',
        'analytics.query'][1 + CAST(hash(i, 'action') % 7 AS INTEGER)] AS action,
       '{"source": "demo", "n": ' || i || '}' AS details,
       ($end::TIMESTAMP - to_seconds(CAST(hash(i, 'when') % (30 * 86400) AS BIGINT)))::TIMESTAMPTZ AS timestamp
FROM range($n) t(i)
"""


def _demo_tables(duck: duckdb.DuckDBPyConnection, seed: int) -> dict[str, pa.Table]:
    owners = sorted({email for _, _, email in DEMO_PROJECTS} | {"analyst@example.com", "admin@example.com"})
    user_ids = {email: i + 1 for i, email in enumerate(owners)}
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    users = pa.table(
        {
            "id": [user_ids[e] for e in owners],
            "email": owners,
            "hashed_password": [hash_password(DEMO_PASSWORD, hashlib.sha256(f"{seed}:{e}".encode()).digest()[:16])
                                for e in owners],
            "is_verified": [True] * len(owners),
            "approval_status": ["approved"] * len(owners),
            "created_at": [now] * len(owners),
        }
    )  # fmt: skip
    sessions = pa.table(
        {
            "id": list(range(1, len(owners) + 1)),
            "user_id": [user_ids[e] for e in owners],
            "session_token": [hashlib.sha256(f"session:{seed}:{e}".encode()).hexdigest() for e in owners],
            "expires_at": [now + dt.timedelta(days=30)] * len(owners),
            "created_at": [now] * len(owners),
        }
    )
    projects = pa.table(
        {
            "id": [p for p, _, _ in DEMO_PROJECTS],
            "name": [n for _, n, _ in DEMO_PROJECTS],
            "owner_id": [user_ids[e] for _, _, e in DEMO_PROJECTS],
            "created_at": [now - dt.timedelta(days=30 * i) for i in range(len(DEMO_PROJECTS))],
            "config": ['{"schedule": "daily"}'] * len(DEMO_PROJECTS),
        }
    )
    pairs = demo_domains(seed)
    domains = pa.table(
        {
            "id": list(range(1, len(pairs) + 1)),
            "project_id": [p for _, p in pairs],
            "domain": [d for d, _ in pairs],
            "scraping_config": ['{"depth": 2}'] * len(pairs),
        }
    )
    duck.register("seed_domains", domains.rename_columns(["domain_id", "project_id", "domain", "cfg"]))
    pages = duck.sql(_SCRAPE_PAGES_SQL).to_arrow_table()
    duck.register("seed_pages", pages)
    project_pages = duck.sql(_PROJECT_PAGES_SQL).to_arrow_table()
    end = duck.sql("SELECT max(created_at) FROM cdx_records").fetchall()[0][0] or now.replace(tzinfo=None)
    audit = duck.sql(_AUDIT_SQL, params={"users": len(owners), "end": end, "n": 5000}).to_arrow_table()
    duck.unregister("seed_domains")
    duck.unregister("seed_pages")
    settings = pa.table(
        {
            "id": [1, 2, 3],
            "key": ["scraping.max_concurrency", "analytics.cache_ttl_s", "retention.days"],
            "value": ["8", "300", "90"],
            "updated_at": [now] * 3,
        }
    )
    return {
        "users": users, "user_sessions": sessions, "projects": projects, "domains": domains,
        "scrape_pages": pages, "project_pages": project_pages, "admin_settings": settings, "audit_logs": audit,
    }  # fmt: skip


def seed_demo(
    uri: str,
    duck: duckdb.DuckDBPyConnection,
    *,
    seed: int = 42,
    progress: Callable[[str, int, int], None] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> dict[str, int]:
    """Replace the OLTP tables' rows with demo rows matching the DuckDB demo data, in one transaction.

    `before_commit` runs right before COMMIT (nothing is visible until it returns).
    """
    started = time.monotonic()
    tables = _demo_tables(duck, seed)
    counts: dict[str, int] = {}
    with pg.connect(uri, autocommit=False) as conn, conn.cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(OLTP_TABLES)} RESTART IDENTITY CASCADE")
        for done, name in enumerate(OLTP_TABLES):
            table = tables[name]
            staging = f"_seed_{name}"
            cur.adbc_ingest(staging, table, mode="replace", temporary=True)
            columns = ", ".join(f'"{c}"' for c in table.column_names)
            cur.execute(f"INSERT INTO {name} ({columns}) SELECT {_casts(name, table)} FROM {staging}")
            if "id" in table.column_names and name != "projects":
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), (SELECT max(id) FROM {name}))")
            counts[name] = table.num_rows
            if progress is not None:
                progress("postgres", done + 1, len(OLTP_TABLES))
        if before_commit is not None:
            before_commit()
        conn.commit()
    logger.info(
        "postgres demo data loaded",
        extra={"fields": {**counts, "seconds": round(time.monotonic() - started, 2)}},
    )
    return counts


_JSON_COLUMNS = {"config", "scraping_config", "details", "value"}


def _casts(table_name: str, table: pa.Table) -> str:
    out = []
    for name in table.column_names:
        out.append(f'"{name}"::jsonb' if name in _JSON_COLUMNS else f'"{name}"')
    return ", ".join(out)
