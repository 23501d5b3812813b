"""Deterministic demo data for the three analytics tables of schemas/duckdb.sql.

Everything is generated inside DuckDB by `INSERT ... SELECT` over `range()`, one chunk of
about a million captures at a time. Pseudo-random numbers come from `hash(i, seed, salt)`,
never from `random()`, so the same `rows`, `seed` and `end_date` give the same table
contents whatever the thread count or chunk size. The shapes are meant to look real:
Zipf-like domain popularity (example.com first), capture volume growing since 1996, the
usual mime-type and status-code mix, and log-normal sizes.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import random
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Final

import duckdb

logger = logging.getLogger(__name__)

#: (project_id, name, owner email) of the demo projects; PostgreSQL seeding uses the same ids.
DEMO_PROJECTS: Final[list[tuple[str, str, str]]] = [
    ("proj-001", "Newsroom Archive", "alice@example.com"),
    ("proj-002", "Government Transparency Watch", "bob@example.com"),
    ("proj-003", "Tech Blog History", "carol@example.org"),
    ("proj-004", "Academic Web Citations", "dave@example.net"),
    ("proj-005", "Climate Policy Tracker", "erin@example.org"),
    ("proj-006", "E-commerce Price History", "frank@example.com"),
    ("proj-007", "Local Journalism Preservation", "alice@example.com"),
    ("proj-008", "Open Source Docs Evolution", "grace@example.net"),
    ("proj-009", "Health Misinformation Study", "heidi@example.org"),
    ("proj-010", "Sports Coverage Timeline", "bob@example.com"),
    ("proj-011", "Cultural Heritage Sites", "ivan@example.net"),
    ("proj-012", "Election Coverage", "judy@example.org"),
]
DEMO_DOMAIN_COUNT: Final = 2000
#: Metric types of performance_metrics, one row each per 5 minutes.
DEMO_METRIC_TYPES: Final = (
    "query_time_ms",
    "cpu_percent",
    "memory_percent",
    "disk_percent",
    "cache_hit_ratio",
    "requests_per_second",
    "error_rate",
)
METRIC_DAYS: Final = 30
FIRST_CAPTURE_DATE: Final = datetime.date(1996, 1, 1)

_CHUNK_ROWS = 1_000_000  # captures per INSERT; progress is reported after each chunk
_SLOT_SECONDS: Final = 300
_WELL_KNOWN: Final = (
    "example.com", "wikipedia.org", "bbc.co.uk", "nytimes.com", "github.com",
    "python.org", "example.org", "lemonde.fr", "spiegel.de", "nos.nl",
)  # fmt: skip
_TOPICS: Final = (
    "news", "tech", "city", "travel", "food", "sport", "health", "science",
    "music", "shop", "film", "garden", "finance", "history", "photo", "games",
)  # fmt: skip
_KINDS: Final = (
    "site", "blog", "portal", "daily", "hub", "times", "journal", "forum", "wiki", "review", "archive",
)  # fmt: skip
_TLDS: Final = (
    ("com", 0.45), ("org", 0.15), ("net", 0.10), ("de", 0.07), ("co.uk", 0.05),
    ("fr", 0.05), ("nl", 0.04), ("io", 0.04), ("es", 0.03), ("it", 0.02),
)  # fmt: skip

# Uniform in (0, 1) and standard normal (Box-Muller) keyed by (row key, salt); the seed is
# baked in as an integer literal. Temporary: created and dropped inside the transaction.
# hash() is applied twice: DuckDB combines the last argument by XOR, so hash(i, seed, 2)
# XOR hash(i, seed, 3) is the same for every i and single-hash draws would be correlated.
_MACROS: Final = (
    "CREATE OR REPLACE TEMP MACRO _demo_u(k, salt) AS "
    "((hash(hash(k, {seed}::BIGINT, salt)) % 4294967291) + 0.5) / 4294967291.0",
    "CREATE OR REPLACE TEMP MACRO _demo_z(k, salt) AS "
    "sqrt(-2 * ln(_demo_u(k, salt))) * cos(2 * pi() * _demo_u(k, salt + 1000))",
)
_CLEANUP: Final = (
    "DROP TABLE IF EXISTS _demo_chunk",
    "DROP TABLE IF EXISTS _demo_domains",
    "DROP MACRO IF EXISTS _demo_z",
    "DROP MACRO IF EXISTS _demo_u",
)
_DOMAINS_SQL: Final = """
CREATE OR REPLACE TEMP TABLE _demo_domains AS
SELECT unnest($ranks)::INTEGER AS domain_rank, unnest($domains) AS domain, unnest($projects) AS project_id
"""

# One chunk of captures [lo, hi). Domain rank is log-uniform (rank 1 gets ~9%), the time
# mixes 15% uniform with 85% of density ~ t^2, URL paths repeat (log-uniform path rank).
_CDX_CHUNK_SQL: Final = """
CREATE OR REPLACE TEMP TABLE _demo_chunk AS
WITH draws AS (
    SELECT i,
        least(floor(pow($n_domains + 1, _demo_u(i, 1))), $n_domains)::INTEGER AS domain_rank,
        CASE WHEN _demo_u(i, 2) < 0.15 THEN _demo_u(i, 3) ELSE cbrt(_demo_u(i, 3)) END AS t,
        _demo_u(i, 4) AS u_mime, _demo_u(i, 5) AS u_status, _demo_z(i, 6) AS z_len,
        _demo_u(i, 7) AS u_source, least(floor(pow(5000, _demo_u(i, 8))), 5000)::INTEGER AS path_rank,
        _demo_u(i, 9) AS u_null, _demo_u(i, 10) AS u_delay
    FROM range($lo, $hi) AS r(i)
), typed AS (
    SELECT *,
        $start_s + floor(t * ($end_s - $start_s))::BIGINT AS unix_timestamp,
        CASE WHEN u_mime < 0.70 THEN 'text/html' WHEN u_mime < 0.78 THEN 'image/jpeg'
             WHEN u_mime < 0.83 THEN 'image/png' WHEN u_mime < 0.87 THEN 'text/css'
             WHEN u_mime < 0.92 THEN 'application/javascript' WHEN u_mime < 0.94 THEN 'application/pdf'
             WHEN u_mime < 0.96 THEN 'application/json' WHEN u_mime < 0.99 THEN 'warc/revisit'
             ELSE 'image/gif' END AS mime_type,
        CASE WHEN u_status < 0.82 THEN 200 WHEN u_status < 0.87 THEN 301 WHEN u_status < 0.92 THEN 302
             WHEN u_status < 0.93 THEN 304 WHEN u_status < 0.97 THEN 404 WHEN u_status < 0.98 THEN 403
             WHEN u_status < 0.99 THEN 500 WHEN u_status < 0.995 THEN 503 WHEN u_status < 0.997 THEN 410
             WHEN u_status < 0.999 THEN 502 ELSE 429 END AS status_code
    FROM draws
), sized AS (
    SELECT *, make_timestamp(unix_timestamp * 1000000) AS captured,
        CASE WHEN mime_type = 'warc/revisit' AND u_null < 0.8 THEN NULL
             WHEN status_code IN (301, 302, 304) AND u_null < 0.5 THEN NULL
             WHEN status_code IN (301, 302, 304) OR mime_type = 'warc/revisit'
                 THEN round(exp(5.9 + 0.3 * z_len))
             WHEN status_code >= 400 THEN round(exp(8.3 + 0.6 * z_len))
             ELSE round(exp(0.9 * z_len + CASE mime_type
                 WHEN 'text/html' THEN 10.3 WHEN 'image/jpeg' THEN 11.3 WHEN 'image/png' THEN 10.6
                 WHEN 'text/css' THEN 9.6 WHEN 'application/javascript' THEN 11.0
                 WHEN 'application/pdf' THEN 13.1 WHEN 'application/json' THEN 8.0 ELSE 9.2 END))
        END::BIGINT AS content_length,
        CASE mime_type
            WHEN 'image/jpeg' THEN '/images/photo-' || path_rank || '.jpg'
            WHEN 'image/png' THEN '/images/icon-' || path_rank || '.png'
            WHEN 'image/gif' THEN '/images/anim-' || path_rank || '.gif'
            WHEN 'text/css' THEN '/static/css/style-' || path_rank % 20 || '.css'
            WHEN 'application/javascript' THEN '/static/js/app-' || path_rank % 50 || '.js'
            WHEN 'application/pdf' THEN '/docs/report-' || path_rank || '.pdf'
            WHEN 'application/json' THEN '/api/v1/items/' || path_rank
            ELSE CASE WHEN path_rank = 1 THEN '/' ELSE '/' || ['news', 'blog', 'articles', 'products',
                'about', 'events', 'category', 'archive'][path_rank % 8 + 1] || '/page-' || path_rank END
        END AS path
    FROM typed
)
SELECT i, 'cdx-' || i AS id, d.domain, 'https://' || d.domain || path AS original_url, unix_timestamp,
    mime_type, status_code, content_length,
    CASE WHEN u_source < 0.62 THEN 'wayback' WHEN u_source < 0.87 THEN 'common_crawl'
         WHEN u_source < 0.95 THEN 'archive_today' ELSE 'local' END AS archive_source,
    d.project_id, captured + to_seconds(30 + floor(pow(u_delay, 3) * 21600)) AS created_at,
    year(captured)::INTEGER AS partition_year, month(captured)::INTEGER AS partition_month
FROM sized JOIN _demo_domains AS d USING (domain_rank)
"""
_CDX_INSERT_SQL: Final = "INSERT INTO base.cdx_records BY NAME SELECT * EXCLUDE (i) FROM _demo_chunk"

# One extracted page for ~1 in 4 successful HTML captures of the chunk.
_CONTENT_SQL: Final = """
INSERT INTO base.content_analytics BY NAME
WITH pages AS (
    SELECT *, CASE WHEN _demo_u(i, 21) < 0.35 THEN 'trafilatura' WHEN _demo_u(i, 21) < 0.55 THEN 'readability'
                   WHEN _demo_u(i, 21) < 0.70 THEN 'newspaper' WHEN _demo_u(i, 21) < 0.90 THEN 'beautifulsoup'
                   ELSE 'firecrawl' END AS extraction_method
    FROM _demo_chunk
    WHERE mime_type = 'text/html' AND status_code = 200 AND _demo_u(i, 20) < 0.25
), sized AS (
    SELECT *, greatest(200, round(content_length * exp(0.35 * _demo_z(i, 22)) * CASE extraction_method
        WHEN 'beautifulsoup' THEN 0.22 WHEN 'newspaper' THEN 0.08 ELSE 0.12 END))::BIGINT AS content_size
    FROM pages
), counted AS (
    SELECT *, round(content_size / (5.4 + 1.2 * _demo_u(i, 23)))::INTEGER AS word_count FROM sized
)
SELECT id AS page_id, project_id, extraction_method,
    (exp(0.5 * _demo_z(i, 24)) * (1 + content_size / 40000.0) * CASE extraction_method
        WHEN 'trafilatura' THEN 0.15 WHEN 'readability' THEN 0.08 WHEN 'newspaper' THEN 0.45
        WHEN 'beautifulsoup' THEN 0.05 ELSE 1.8 END)::FLOAT AS processing_time,
    content_size, word_count, round(word_count * (0.01 + 0.04 * _demo_u(i, 25)))::INTEGER AS entity_count,
    CASE WHEN _demo_u(i, 26) < 0.55 THEN 'en' WHEN _demo_u(i, 26) < 0.63 THEN 'de'
         WHEN _demo_u(i, 26) < 0.70 THEN 'fr' WHEN _demo_u(i, 26) < 0.77 THEN 'es'
         WHEN _demo_u(i, 26) < 0.80 THEN 'nl' WHEN _demo_u(i, 26) < 0.84 THEN 'it'
         WHEN _demo_u(i, 26) < 0.88 THEN 'pt' WHEN _demo_u(i, 26) < 0.92 THEN 'ja'
         WHEN _demo_u(i, 26) < 0.95 THEN 'zh' WHEN _demo_u(i, 26) < 0.98 THEN 'ru'
         WHEN _demo_u(i, 26) < 0.99 THEN 'pl' ELSE 'sv' END AS language,
    greatest(0.0, least(1.0, 0.04 * ln(word_count / 500.0) + 0.07 * _demo_z(i, 27) + CASE extraction_method
        WHEN 'trafilatura' THEN 0.78 WHEN 'readability' THEN 0.72 WHEN 'newspaper' THEN 0.68
        WHEN 'beautifulsoup' THEN 0.52 ELSE 0.83 END))::FLOAT AS quality_score,
    created_at + to_seconds(60 + floor(pow(_demo_u(i, 28), 2) * 259200)) AS created_at,
    make_timestamp(unix_timestamp * 1000000)::DATE AS date_captured
FROM counted
"""

# One row per metric type per 5 minutes; `load` is a daily cycle peaking at 14:00 UTC.
_METRICS_SQL: Final = """
INSERT INTO base.performance_metrics BY NAME
WITH slots AS (
    SELECT i, i // $n_types AS slot, $types[i % $n_types + 1] AS metric_type,
        make_timestamp(($start_s + (i // $n_types) * $slot_s) * 1000000) AS ts
    FROM range(0, $n_slots * $n_types) AS r(i)
), shaped AS (
    SELECT *, 0.5 + 0.5 * sin(2 * pi() * (hour(ts) + minute(ts) / 60.0 - 8) / 24) AS load,
        CASE WHEN dayofweek(ts) IN (0, 6) THEN 0.7 ELSE 1.0 END AS weekday,
        CASE WHEN metric_type = 'query_time_ms' AND _demo_u(i, 41) < 0.35 THEN 'postgres'
             ELSE 'duckdb' END AS engine
    FROM slots
)
SELECT 'pm-' || lpad(slot::VARCHAR, 5, '0') || '-' || metric_type AS metric_id, metric_type,
    CASE metric_type
        WHEN 'query_time_ms' THEN (CASE engine WHEN 'duckdb' THEN 35 ELSE 110 END) * (1 + 0.8 * load)
            * exp(0.35 * _demo_z(i, 42)) * (CASE WHEN _demo_u(i, 43) < 0.005 THEN 12 ELSE 1 END)
        WHEN 'cpu_percent' THEN greatest(1, least(100, 15 + 50 * load * weekday + 6 * _demo_z(i, 42)))
        WHEN 'memory_percent' THEN greatest(1, least(100, 52 + 12 * load + 2 * _demo_z(i, 42)))
        WHEN 'disk_percent' THEN 61 + 9.0 * slot / $n_slots + 0.2 * _demo_z(i, 42)
        WHEN 'cache_hit_ratio' THEN greatest(0, least(1, 0.94 - 0.06 * load + 0.015 * _demo_z(i, 42)))
        WHEN 'requests_per_second' THEN 140 * (0.25 + load) * weekday * exp(0.15 * _demo_z(i, 42))
        ELSE greatest(0, 0.002 + 0.004 * load + 0.001 * _demo_z(i, 42))
            * (CASE WHEN _demo_u(i, 43) < 0.003 THEN 25 ELSE 1 END)
    END::DOUBLE AS value,
    json_object('engine', engine, 'host', 'node-' || (1 + floor(3 * _demo_u(i, 44)))::INTEGER) AS dimensions,
    ts AS timestamp, 90 AS retention_days
FROM shaped
"""
_SUMMARY_SQL: Final = """
SELECT (SELECT count(*) FROM base.cdx_records), (SELECT count(*) FROM base.content_analytics),
    (SELECT count(*) FROM base.performance_metrics), count(DISTINCT project_id), count(DISTINCT domain)
FROM base.cdx_records
"""


@dataclasses.dataclass(frozen=True, slots=True)
class DemoSummary:
    """What `generate_demo_data` wrote: rows per table, projects and domains present."""

    cdx_records: int
    content_analytics: int
    performance_metrics: int
    projects: int
    domains: int
    seconds: float


@lru_cache(maxsize=8)
def _domains(seed: int) -> tuple[tuple[str, str], ...]:
    rng = random.Random(seed)

    def pick(items: tuple[str, ...]) -> str:
        return items[int(rng.random() * len(items))]

    def weighted(choices: list[tuple[str, float]]) -> str:
        x = rng.random() * sum(w for _, w in choices)
        for value, weight in choices:
            x -= weight
            if x < 0:
                return value
        return choices[-1][0]

    project_weights = [(pid, 1 / (k + 1) ** 0.8) for k, (pid, _, _) in enumerate(DEMO_PROJECTS)]
    result: list[tuple[str, str]] = []
    for rank in range(1, DEMO_DOMAIN_COUNT + 1):
        if rank <= len(_WELL_KNOWN):
            name = _WELL_KNOWN[rank - 1]
        else:
            name = f"{pick(_TOPICS)}-{pick(_KINDS)}-{rank}.{weighted(list(_TLDS))}"
        # The first twelve domains go one to each project, so no project is empty.
        own = DEMO_PROJECTS[rank - 1][0] if rank <= len(DEMO_PROJECTS) else weighted(project_weights)
        result.append((name, own))
    return tuple(result)


def demo_domains(seed: int = 42) -> list[tuple[str, str]]:
    """(domain, project_id) pairs, most popular first: example.com is rank 1.

    Every domain belongs to exactly one project of DEMO_PROJECTS.
    """
    return list(_domains(seed))


def _epoch_seconds(day: datetime.date) -> int:
    return int(datetime.datetime.combine(day, datetime.time(), datetime.UTC).timestamp())


def generate_demo_data(
    con: duckdb.DuckDBPyConnection,
    rows: int = 1_000_000,
    *,
    seed: int = 42,
    end_date: datetime.date | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> DemoSummary:
    """Replace the contents of the analytics tables with `rows` demo captures.

    The tables must exist (schemas/duckdb.sql); rows go into the base tables (schema
    `base`), not into ingested datasets. Captures span 1996-01-01 to `end_date`
    (inclusive, default today UTC); metrics cover the 30 days ending with `end_date`.
    Everything runs in one transaction, so `con` must not be inside one: on any error,
    including one raised by `progress` (called as `progress(step, done, total)` after
    each chunk), the old data stays. `before_commit` runs inside the transaction, every
    row in place, right before COMMIT: work that must succeed with it (the PostgreSQL demo
    rows, read from these uncommitted tables) or undo it by raising.
    """
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if not -(2**63) <= seed < 2**63:
        raise ValueError("seed must fit in a signed 64-bit integer")
    end = end_date if end_date is not None else datetime.datetime.now(datetime.UTC).date()
    if end < FIRST_CAPTURE_DATE:
        raise ValueError(f"end_date must not be before {FIRST_CAPTURE_DATE}, got {end}")
    end_s = _epoch_seconds(end + datetime.timedelta(days=1))
    n_slots = METRIC_DAYS * 86400 // _SLOT_SECONDS
    n_metrics = n_slots * len(DEMO_METRIC_TYPES)
    domains = _domains(seed)
    started = time.perf_counter()

    con.execute("BEGIN TRANSACTION")
    try:
        for table in ("cdx_records", "content_analytics", "performance_metrics"):
            con.execute(f"DELETE FROM base.{table}")
        for macro in _MACROS:
            con.execute(macro.format(seed=int(seed)))
        con.execute(
            _DOMAINS_SQL,
            {
                "ranks": list(range(1, len(domains) + 1)),
                "domains": [d for d, _ in domains],
                "projects": [p for _, p in domains],
            },
        )
        for lo in range(0, rows, _CHUNK_ROWS):
            hi = min(rows, lo + _CHUNK_ROWS)
            params = {"lo": lo, "hi": hi, "n_domains": len(domains)}
            params |= {"start_s": _epoch_seconds(FIRST_CAPTURE_DATE), "end_s": end_s}
            con.execute(_CDX_CHUNK_SQL, params)
            con.execute(_CDX_INSERT_SQL)
            con.execute(_CONTENT_SQL)
            logger.debug("demo data chunk", extra={"fields": {"done": hi, "total": rows}})
            if progress is not None:
                progress("cdx_records", hi, rows)
        metric_params: dict[str, object] = {
            "types": list(DEMO_METRIC_TYPES),
            "n_types": len(DEMO_METRIC_TYPES),
            "n_slots": n_slots,
            "slot_s": _SLOT_SECONDS,
            "start_s": end_s - METRIC_DAYS * 86400,
        }
        con.execute(_METRICS_SQL, metric_params)
        if progress is not None:
            progress("performance_metrics", n_metrics, n_metrics)
        for statement in _CLEANUP:
            con.execute(statement)
        cdx, content, metrics, projects, present = (int(n) for n in con.execute(_SUMMARY_SQL).fetchall()[0])
        if before_commit is not None:
            before_commit()
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    summary = DemoSummary(cdx, content, metrics, projects, present, time.perf_counter() - started)
    logger.info("demo data generated", extra={"fields": dataclasses.asdict(summary)})
    return summary
