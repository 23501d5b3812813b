"""The demo data generator on real DuckDB files: determinism, shapes, consistency, atomicity."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from flight_server.demo import analytics as demo
from flight_server.demo.analytics import DEMO_METRIC_TYPES, DEMO_PROJECTS, DemoSummary, demo_domains, generate_demo_data

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "duckdb.sql"
TABLES = ("cdx_records", "content_analytics", "performance_metrics")
ROWS = 50_000
SEED = 7
END = datetime.date(2024, 6, 30)
METRIC_ROWS = 30 * 288 * len(DEMO_METRIC_TYPES)


def _connect(path: Path, threads: int = 2) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path))
    con.execute(f"SET threads = {threads}")
    con.execute(SCHEMA.read_text())
    return con


def _checksums(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[int, int]]:
    """Row count and an order-independent checksum over every column of each table."""
    sums: dict[str, tuple[int, int]] = {}
    for table in TABLES:
        count, total = con.execute(f"SELECT count(*), sum(hash(t)::HUGEINT) FROM {table} AS t").fetchall()[0]
        sums[table] = (int(count), int(total or 0))
    return sums


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> object:
    return con.execute(sql).fetchall()[0][0]


@pytest.fixture(scope="module")
def generated(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[duckdb.DuckDBPyConnection, DemoSummary]]:
    con = _connect(tmp_path_factory.mktemp("demo") / "demo.duckdb")
    summary = generate_demo_data(con, ROWS, seed=SEED, end_date=END)
    yield con, summary
    con.close()


def test_demo_is_deterministic_across_threads_and_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = _connect(tmp_path / "one.duckdb", threads=1)
    generate_demo_data(one, ROWS, seed=SEED, end_date=END)
    monkeypatch.setattr(demo, "_CHUNK_ROWS", 12_345)
    two = _connect(tmp_path / "two.duckdb", threads=4)
    generate_demo_data(two, ROWS, seed=SEED, end_date=END)
    assert _checksums(one) == _checksums(two)
    generate_demo_data(two, ROWS, seed=SEED + 1, end_date=END)
    other = _checksums(two)
    assert all(other[t] != _checksums(one)[t] for t in ("cdx_records", "content_analytics"))


def test_demo_row_counts(generated: tuple[duckdb.DuckDBPyConnection, DemoSummary]) -> None:
    con, summary = generated
    counts = {table: n for table, (n, _) in _checksums(con).items()}
    assert counts == {
        "cdx_records": ROWS,
        "content_analytics": summary.content_analytics,
        "performance_metrics": METRIC_ROWS,
    }
    assert (summary.cdx_records, summary.performance_metrics) == (ROWS, METRIC_ROWS)
    assert summary.projects == len(DEMO_PROJECTS)
    assert 1000 < summary.domains <= len(demo_domains(SEED))
    assert summary.seconds > 0
    html_ok = _one(con, "SELECT count(*) FROM cdx_records WHERE mime_type = 'text/html' AND status_code = 200")
    assert isinstance(html_ok, int)
    assert 0.2 * html_ok < summary.content_analytics < 0.3 * html_ok
    assert _one(con, "SELECT count(DISTINCT id) FROM cdx_records") == ROWS


def test_demo_replaces_previous_contents(generated: tuple[duckdb.DuckDBPyConnection, DemoSummary]) -> None:
    con, _ = generated
    before = _checksums(con)
    generate_demo_data(con, ROWS, seed=SEED, end_date=END)
    assert _checksums(con) == before


def test_demo_example_com_is_the_top_domain(generated: tuple[duckdb.DuckDBPyConnection, DemoSummary]) -> None:
    con, _ = generated
    top = con.execute(
        "SELECT domain, count(*) / sum(count(*)) OVER () AS share FROM cdx_records "
        "GROUP BY domain ORDER BY count(*) DESC LIMIT 2"
    ).fetchall()
    assert top[0][0] == "example.com"
    assert top[0][1] > 0.05
    assert top[0][1] > 1.3 * top[1][1]
    assert demo_domains(SEED)[0][0] == "example.com"


def test_demo_years_span_1996_to_end_date_and_grow(
    generated: tuple[duckdb.DuckDBPyConnection, DemoSummary],
) -> None:
    con, _ = generated
    years = dict(con.execute("SELECT partition_year, count(*) FROM cdx_records GROUP BY 1").fetchall())
    assert sorted(years) == list(range(1996, END.year + 1))
    first, middle, last = (sum(years[y] for y in range(lo, lo + 9)) for lo in (1996, 2005, 2014))
    assert first < middle < last
    assert years[2023] > 2 * years[2000]
    bad = _one(
        con,
        "SELECT count(*) FROM cdx_records WHERE unix_timestamp < epoch(TIMESTAMP '1996-01-01') "
        f"OR unix_timestamp >= epoch(TIMESTAMP '{END + datetime.timedelta(days=1)}') "
        "OR partition_year <> year(make_timestamp(unix_timestamp * 1000000)) "
        "OR partition_month <> month(make_timestamp(unix_timestamp * 1000000)) "
        "OR created_at < make_timestamp(unix_timestamp * 1000000)",
    )
    assert bad == 0


def test_demo_urls_repeat_and_mixes_look_real(
    generated: tuple[duckdb.DuckDBPyConnection, DemoSummary],
) -> None:
    con, _ = generated
    urls = _one(con, "SELECT count(DISTINCT original_url) FROM cdx_records")
    assert isinstance(urls, int)
    assert urls < 0.8 * ROWS
    assert _one(con, "SELECT count(*) FROM cdx_records WHERE original_url NOT LIKE 'https://' || domain || '/%'") == 0
    mimes = dict(con.execute("SELECT mime_type, count(*) / $n FROM cdx_records GROUP BY 1", {"n": ROWS}).fetchall())
    assert 0.65 < mimes["text/html"] < 0.75
    assert {"image/jpeg", "image/png", "text/css", "application/javascript", "warc/revisit"} <= set(mimes)
    statuses = dict(con.execute("SELECT status_code, count(*) FROM cdx_records GROUP BY 1").fetchall())
    assert max(statuses, key=statuses.__getitem__) == 200
    assert {301, 302, 404, 500, 503} <= set(statuses)
    sources = con.execute("SELECT archive_source FROM cdx_records GROUP BY 1 ORDER BY count(*) DESC").fetchall()
    assert [s for (s,) in sources] == ["wayback", "common_crawl", "archive_today", "local"]


def test_demo_content_pages_are_html_200_captures(
    generated: tuple[duckdb.DuckDBPyConnection, DemoSummary],
) -> None:
    con, _ = generated
    orphans = _one(
        con,
        """SELECT count(*) FROM content_analytics AS a LEFT JOIN cdx_records AS c
           ON c.id = a.page_id AND c.mime_type = 'text/html' AND c.status_code = 200
              AND c.project_id = a.project_id
              AND a.date_captured = make_timestamp(c.unix_timestamp * 1000000)::DATE
              AND a.created_at > c.created_at
           WHERE c.id IS NULL""",
    )
    assert orphans == 0
    assert _one(con, "SELECT count(*) - count(DISTINCT page_id) FROM content_analytics") == 0
    bad = _one(
        con,
        "SELECT count(*) FROM content_analytics WHERE quality_score NOT BETWEEN 0 AND 1 "
        "OR word_count NOT BETWEEN content_size / 7 AND content_size / 5 OR entity_count > word_count",
    )
    assert bad == 0
    methods = {m for (m,) in con.execute("SELECT DISTINCT extraction_method FROM content_analytics").fetchall()}
    assert methods == {"trafilatura", "readability", "newspaper", "beautifulsoup", "firecrawl"}
    languages = con.execute("SELECT language FROM content_analytics GROUP BY 1 ORDER BY count(*) DESC").fetchall()
    assert languages[0][0] == "en"
    assert len(languages) == 12


def test_demo_metrics_every_five_minutes(generated: tuple[duckdb.DuckDBPyConnection, DemoSummary]) -> None:
    con, _ = generated
    rows = con.execute(
        "SELECT metric_type, count(*), min(timestamp), max(timestamp), count(DISTINCT metric_id), "
        "min(retention_days), list(DISTINCT dimensions->>'engine') "
        "FROM performance_metrics GROUP BY 1 ORDER BY 1"
    ).fetchall()
    start = datetime.datetime.combine(END - datetime.timedelta(days=29), datetime.time())
    end = datetime.datetime.combine(END, datetime.time(23, 55))
    assert [r[0] for r in rows] == sorted(DEMO_METRIC_TYPES)
    for metric, count, first, last, ids, retention, engines in rows:
        assert (count, first, last, ids, retention) == (8640, start, end, 8640, 90), metric
        assert sorted(engines) == (["duckdb", "postgres"] if metric == "query_time_ms" else ["duckdb"])
    peak, trough = con.execute(
        "SELECT avg(value) FILTER (WHERE hour(timestamp) = 14), "
        "avg(value) FILTER (WHERE hour(timestamp) = 2) "
        "FROM performance_metrics WHERE metric_type = 'cpu_percent'"
    ).fetchall()[0]
    assert peak > 2 * trough


def test_demo_domains_belong_to_exactly_one_project(
    generated: tuple[duckdb.DuckDBPyConnection, DemoSummary],
) -> None:
    con, _ = generated
    pairs = demo_domains(SEED)
    project_ids = {pid for pid, _, _ in DEMO_PROJECTS}
    assert len(DEMO_PROJECTS) == len(project_ids) == 12
    assert len({d for d, _ in pairs}) == len(pairs) == demo.DEMO_DOMAIN_COUNT
    assert {p for _, p in pairs} == project_ids
    in_data = set(con.execute("SELECT DISTINCT domain, project_id FROM cdx_records").fetchall())
    assert in_data <= set(pairs)
    assert {p for _, p in in_data} == project_ids
    assert demo_domains(SEED) == pairs


def test_demo_failure_keeps_previous_contents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    con = _connect(tmp_path / "demo.duckdb")
    generate_demo_data(con, ROWS, seed=SEED, end_date=END)
    before = _checksums(con)
    monkeypatch.setattr(demo, "_CHUNK_ROWS", 10_000)
    seen: list[tuple[str, int, int]] = []

    def interrupt(step: str, done: int, total: int) -> None:
        seen.append((step, done, total))
        if done >= 20_000:
            raise KeyboardInterrupt("ctrl-c after 20,000 rows")

    with pytest.raises(KeyboardInterrupt, match="ctrl-c after 20,000 rows"):
        generate_demo_data(con, 2 * ROWS, seed=SEED + 1, end_date=END, progress=interrupt)
    assert seen == [("cdx_records", 10_000, 100_000), ("cdx_records", 20_000, 100_000)]
    assert _checksums(con) == before
    leftovers = "SELECT count(*) FROM duckdb_functions() WHERE starts_with(function_name, '_demo_')"
    assert _one(con, leftovers) == 0
    assert _one(con, "SELECT count(*) FROM duckdb_tables() WHERE starts_with(table_name, '_demo_')") == 0
    reports: list[tuple[str, int, int]] = []
    generate_demo_data(con, 15_000, seed=SEED, end_date=END, progress=lambda *a: reports.append(a))
    assert reports == [
        ("cdx_records", 10_000, 15_000),
        ("cdx_records", 15_000, 15_000),
        ("performance_metrics", METRIC_ROWS, METRIC_ROWS),
    ]


def test_demo_rejects_bad_arguments(tmp_path: Path) -> None:
    con = _connect(tmp_path / "demo.duckdb")
    with pytest.raises(ValueError, match="rows"):
        generate_demo_data(con, -1)
    with pytest.raises(ValueError, match="end_date"):
        generate_demo_data(con, 10, end_date=datetime.date(1995, 12, 31))
