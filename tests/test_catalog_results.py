"""Every named query of schemas/catalog.toml against an independent pandas computation.

Each test runs the named query through the real Flight server (GetFlightInfo + DoGet),
reads the raw tables through the same server with plain SQL, recomputes the numbers in
pandas and compares them (floats with a relative tolerance). Percentiles use pandas'
default linear interpolation, which is DuckDB's quantile_cont.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pytest

RTOL = 1e-6

# pandas equivalents of the catalogue's `interval` values
PERIOD_FREQ = {"day": "D", "week": "W-SUN", "month": "M", "year": "Y"}  # W-SUN: weeks start on Monday
RANGE_FREQ = {"day": "D", "week": "W-MON", "month": "MS", "year": "YS"}
FLOOR_FREQ = {"minute": "min", "hour": "h", "day": "D"}


def run(server: Any, command: dict[str, Any]) -> pa.Table:
    desc = flight.FlightDescriptor.for_command(json.dumps(command).encode())
    info = server.client.get_flight_info(desc)
    return server.client.do_get(info.endpoints[0].ticket).read_all()


def named(server: Any, query: str, **params: Any) -> pd.DataFrame:
    """A named query's result as a DataFrame (None parameters are left out)."""
    params = {k: v for k, v in params.items() if v is not None}
    return run(server, {"query": query, "params": params}).to_pandas(date_as_object=False)


def _normalised(df: pd.DataFrame) -> pd.DataFrame:
    df = df.reset_index(drop=True).copy()
    for column in df.columns:
        if pd.api.types.is_datetime64_any_dtype(df[column]):
            df[column] = df[column].astype("datetime64[us]")
        elif pd.api.types.is_bool_dtype(df[column]) or pd.api.types.is_numeric_dtype(df[column]):
            df[column] = df[column].astype("float64")
        else:
            df[column] = df[column].astype(object).where(df[column].notna(), None)
    return df


def assert_frame_close(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(actual.columns) == list(expected.columns)
    assert len(actual) == len(expected), f"{len(actual)} rows, expected {len(expected)}"
    pd.testing.assert_frame_equal(_normalised(actual), _normalised(expected), check_dtype=False, rtol=RTOL, atol=1e-12)


def period_start(ts: pd.Series, interval: str) -> pd.Series:
    return ts.dt.to_period(PERIOD_FREQ[interval]).dt.start_time.astype("datetime64[us]")


def quantile(series: pd.Series, q: float) -> float:
    return float(series.astype("float64").quantile(q))


# -- raw tables, read through the server --------------------------------------------------


@pytest.fixture(scope="module")
def cdx(server: Any) -> pd.DataFrame:
    df = run(server, {"sql": "SELECT * FROM cdx_records"}).to_pandas()
    df["captured_at"] = pd.to_datetime(df["unix_timestamp"], unit="s").astype("datetime64[us]")
    return df


@pytest.fixture(scope="module")
def content(server: Any) -> pd.DataFrame:
    return run(server, {"sql": "SELECT * FROM content_analytics"}).to_pandas()


@pytest.fixture(scope="module")
def metrics(server: Any) -> pd.DataFrame:
    df = run(server, {"sql": "SELECT * FROM performance_metrics"}).to_pandas()
    df["timestamp"] = df["timestamp"].astype("datetime64[us]")
    return df


def domain_at_rank(cdx: pd.DataFrame, rank: int) -> str:
    counts = cdx.groupby("domain").size().reset_index(name="n")
    return str(counts.sort_values(["n", "domain"], ascending=[False, True])["domain"].iloc[rank - 1])


def _project(df: pd.DataFrame, project_id: str | None) -> pd.DataFrame:
    return df if project_id is None else df[df["project_id"] == project_id]


# -- sample parameters for every query (sensible values; each must give rows) --------------

SAMPLES: dict[str, dict[str, Any]] = {
    "domains.timeline": {"domain": "example.com"},
    "domains.statistics": {"domain": "example.com"},
    "domains.top": {},
    "domains.coverage": {"domain": "example.com"},
    "projects.content_quality": {"project_id": "proj-001"},
    "projects.comparison": {},
    "content.quality_distribution": {},
    "content.extraction_performance": {},
    "content.language_analysis": {},
    "content.entity_analytics": {},
    "system.performance": {},
    "system.resource_usage": {},
    "system.health_metrics": {},
}


def test_catalog_samples_cover_every_duckdb_named_query(server: Any) -> None:
    # the queries that need PostgreSQL are checked in test_postgres.py
    assert sorted(SAMPLES) == sorted(q.name for q in server.app.catalog if q.engine == "duckdb")


@pytest.mark.parametrize("query", sorted(SAMPLES))
def test_catalog_query_schema_is_stable_and_rows_present(server: Any, query: str) -> None:
    desc = flight.FlightDescriptor.for_command(json.dumps({"query": query, "params": SAMPLES[query]}).encode())
    info = server.client.get_flight_info(desc)
    table = server.client.do_get(info.endpoints[0].ticket).read_all()
    assert table.num_rows > 0
    assert table.schema.remove_metadata() == info.schema.remove_metadata()
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) for name in table.column_names)


@pytest.mark.parametrize(
    ("query", "params", "named_param"),
    [
        ("domains.top", {"limit": 0}, "limit"),
        ("domains.top", {"limit": 1001}, "limit"),
        ("domains.top", {"metric": "visits"}, "metric"),
        ("domains.coverage", {"domain": "example.com", "interval": "week"}, "interval"),
        ("content.quality_distribution", {"bins": 1}, "bins"),
        ("content.entity_analytics", {"group_by": "domain"}, "group_by"),
        ("system.performance", {"hours": 721}, "hours"),
        ("system.resource_usage", {"hours": 0}, "hours"),
        ("projects.content_quality", {}, "project_id"),
    ],
)
def test_catalog_query_rejects_bad_parameters(
    server: Any, query: str, params: dict[str, Any], named_param: str
) -> None:
    with pytest.raises(pa.ArrowInvalid, match=named_param):
        run(server, {"query": query, "params": params})


# -- domains.timeline ------------------------------------------------------------------------


def expected_timeline(
    cdx: pd.DataFrame, domain: str, interval: str, start: str | None, end: str | None
) -> pd.DataFrame:
    d = cdx[cdx["domain"] == domain]
    if start is not None:
        d = d[d["captured_at"] >= pd.Timestamp(start)]
    if end is not None:
        d = d[d["captured_at"] < pd.Timestamp(end) + pd.Timedelta(days=1)]
    d = d.assign(
        period_start=period_start(d["captured_at"], interval),
        ok=d["status_code"].between(200, 299),
        error=d["status_code"] >= 400,
    )
    g = d.groupby("period_start")
    agg = pd.DataFrame(
        {
            "captures": g.size(),
            "unique_urls": g["original_url"].nunique(),
            "avg_content_length": g["content_length"].mean(),
            "success_rate": g["ok"].mean(),
            "error_count": g["error"].sum(),
        }
    )
    lo = period_start(pd.Series([pd.Timestamp(start)]), interval)[0] if start else agg.index.min()
    hi = period_start(pd.Series([pd.Timestamp(end)]), interval)[0] if end else agg.index.max()
    out = agg.reindex(pd.date_range(lo, hi, freq=RANGE_FREQ[interval]).astype("datetime64[us]"))
    counts = ["captures", "unique_urls", "error_count"]
    out[counts] = out[counts].fillna(0)
    return out.rename_axis("period_start").reset_index()


@pytest.mark.parametrize(
    ("rank", "interval", "start", "end"),
    [
        (1, "year", None, None),
        (1, "month", None, None),
        (1, "week", "2019-12-31", "2020-06-30"),
        (1, "day", "2024-02-01", "2024-03-31"),
        (40, "month", "2010-01-01", None),
        (700, "year", None, "2015-12-31"),
    ],
)
def test_catalog_domains_timeline_matches_pandas(
    server: Any, cdx: pd.DataFrame, rank: int, interval: str, start: str | None, end: str | None
) -> None:
    domain = domain_at_rank(cdx, rank)
    actual = named(server, "domains.timeline", domain=domain, interval=interval, start=start, end=end)
    assert_frame_close(actual, expected_timeline(cdx, domain, interval, start, end))


def test_catalog_domains_timeline_start_end_filter_captures(server: Any, cdx: pd.DataFrame) -> None:
    everything = named(server, "domains.timeline", domain="example.com", interval="year")
    window = named(
        server,
        "domains.timeline",
        domain="example.com",
        interval="year",
        start="2005-03-15",
        end="2007-07-01",
    )
    assert list(window["period_start"].dt.year) == [2005, 2006, 2007]
    in_window = cdx[
        (cdx["domain"] == "example.com") & (cdx["captured_at"] >= "2005-03-15") & (cdx["captured_at"] < "2007-07-02")
    ]
    assert window["captures"].sum() == len(in_window) < everything["captures"].sum()
    assert everything["captures"].sum() == (cdx["domain"] == "example.com").sum()


# -- domains.statistics ----------------------------------------------------------------------


def expected_statistics(cdx: pd.DataFrame, domain: str) -> pd.DataFrame:
    d = cdx[cdx["domain"] == domain]
    mimes = d.groupby("mime_type").size().reset_index(name="n")
    mimes = mimes.sort_values(["n", "mime_type"], ascending=[False, True])
    row = {
        "domain": domain,
        "total_captures": len(d),
        "unique_urls": d["original_url"].nunique(),
        "first_capture": d["captured_at"].min(),
        "last_capture": d["captured_at"].max(),
        "years_covered": d["captured_at"].dt.year.nunique(),
        "mime_types": d["mime_type"].nunique(),
        "top_mime_type": mimes["mime_type"].iloc[0] if len(mimes) else None,
        "avg_content_length": d["content_length"].mean(),
        "total_bytes": d["content_length"].sum(),
        "success_rate": d["status_code"].between(200, 299).mean() if len(d) else np.nan,
        "archive_sources": d["archive_source"].nunique(),
    }
    return pd.DataFrame([row])


@pytest.mark.parametrize("rank", [1, 25, 1500])
def test_catalog_domains_statistics_matches_pandas(server: Any, cdx: pd.DataFrame, rank: int) -> None:
    domain = domain_at_rank(cdx, rank)
    actual = named(server, "domains.statistics", domain=domain)
    assert_frame_close(actual, expected_statistics(cdx, domain))
    if rank == 1:
        assert domain == "example.com"


def test_catalog_domains_statistics_unknown_domain_is_one_empty_row(server: Any, cdx: pd.DataFrame) -> None:
    actual = named(server, "domains.statistics", domain="no-such-domain.invalid")
    assert len(actual) == 1
    assert actual.loc[0, "total_captures"] == 0 and actual.loc[0, "total_bytes"] == 0
    assert pd.isna(actual.loc[0, "first_capture"]) and pd.isna(actual.loc[0, "success_rate"])


# -- domains.top -----------------------------------------------------------------------------


def expected_top(cdx: pd.DataFrame, limit: int, metric: str, since: str | None, project_id: str | None) -> pd.DataFrame:
    d = _project(cdx, project_id)
    if since is not None:
        d = d[d["captured_at"] >= pd.Timestamp(since)]
    g = d.groupby("domain")
    agg = pd.DataFrame(
        {
            "captures": g.size(),
            "unique_urls": g["original_url"].nunique(),
            "total_bytes": g["content_length"].sum(),
            "first_capture": g["captured_at"].min(),
            "last_capture": g["captured_at"].max(),
        }
    ).reset_index()
    key = {"captures": "captures", "unique_urls": "unique_urls", "bytes": "total_bytes"}[metric]
    agg = agg.sort_values([key, "domain"], ascending=[False, True]).head(limit)
    agg.insert(0, "rank", range(1, len(agg) + 1))
    return agg


@pytest.mark.parametrize(
    ("limit", "metric", "since", "project_id"),
    [
        (10, "captures", None, None),
        (25, "unique_urls", None, None),
        (1000, "bytes", None, None),
        (15, "captures", "2020-01-01", None),
        (1000, "unique_urls", None, "proj-004"),
        (7, "bytes", "2012-06-30", "proj-001"),
    ],
)
def test_catalog_domains_top_matches_pandas(
    server: Any, cdx: pd.DataFrame, limit: int, metric: str, since: str | None, project_id: str | None
) -> None:
    actual = named(server, "domains.top", limit=limit, metric=metric, since=since, project_id=project_id)
    assert_frame_close(actual, expected_top(cdx, limit, metric, since, project_id))


def test_catalog_domains_top_project_filter_restricts_rows(server: Any, cdx: pd.DataFrame) -> None:
    everything = named(server, "domains.top", limit=1000)
    project = named(server, "domains.top", limit=1000, project_id="proj-005")
    project_domains = set(cdx.loc[cdx["project_id"] == "proj-005", "domain"])
    assert 0 < len(project) < len(everything)
    assert set(project["domain"]) <= project_domains
    assert project["captures"].sum() < everything["captures"].sum()
    assert named(server, "domains.top", project_id="no-such-project").empty


# -- domains.coverage ------------------------------------------------------------------------


def expected_coverage(cdx: pd.DataFrame, domain: str, interval: str) -> pd.DataFrame:
    days = cdx.loc[cdx["domain"] == domain, "captured_at"].dt.normalize()
    last_day = cdx["captured_at"].max().normalize()
    step = pd.offsets.YearBegin(1) if interval == "year" else pd.offsets.MonthBegin(1)
    first = period_start(pd.Series([days.min()]), interval)[0]
    rows = []
    for start in pd.date_range(first, last_day, freq=RANGE_FREQ[interval]):
        stop = min(start + step, last_day + pd.Timedelta(days=1))
        in_period = days[(days >= start) & (days < stop)]
        distinct = sorted(in_period.unique())
        edges = [start - pd.Timedelta(days=1), *distinct, stop]
        n_days = (stop - start).days
        rows.append(
            {
                "period_start": start,
                "captures": len(in_period),
                "days_with_captures": len(distinct),
                "days_in_period": n_days,
                "coverage_ratio": len(distinct) / n_days,
                "longest_gap_days": max((b - a).days - 1 for a, b in itertools.pairwise(edges)),
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("rank", "interval"), [(1, "year"), (1, "month"), (300, "year"), (1200, "month")])
def test_catalog_domains_coverage_matches_pandas(server: Any, cdx: pd.DataFrame, rank: int, interval: str) -> None:
    domain = domain_at_rank(cdx, rank)
    actual = named(server, "domains.coverage", domain=domain, interval=interval)
    assert_frame_close(actual, expected_coverage(cdx, domain, interval))


def test_catalog_domains_coverage_shows_gaps_of_sparse_domain(server: Any, cdx: pd.DataFrame) -> None:
    actual = named(server, "domains.coverage", domain=domain_at_rank(cdx, 1900), interval="year")
    empty = actual[actual["captures"] == 0]
    assert len(empty) > 0, "a rarely captured domain must have years without captures"
    assert (empty["longest_gap_days"] == empty["days_in_period"]).all()
    assert (empty["coverage_ratio"] == 0).all()
    assert actual["captures"].sum() == (cdx["domain"] == domain_at_rank(cdx, 1900)).sum()


# -- projects.content_quality ----------------------------------------------------------------


def expected_content_quality(content: pd.DataFrame, project_id: str) -> pd.DataFrame:
    rows = []
    for method, c in content[content["project_id"] == project_id].groupby("extraction_method"):
        q = c["quality_score"]
        rows.append(
            {
                "extraction_method": method,
                "pages": len(c),
                "avg_quality_score": q.astype("float64").mean(),
                "median_quality_score": quantile(q, 0.5),
                "p90_quality_score": quantile(q, 0.9),
                "high_quality_share": (q >= np.float32(0.7)).sum() / q.notna().sum(),
                "avg_word_count": c["word_count"].astype("float64").mean(),
            }
        )
    return pd.DataFrame(rows).sort_values(["pages", "extraction_method"], ascending=[False, True])


@pytest.mark.parametrize("project_id", ["proj-001", "proj-006", "proj-012"])
def test_catalog_projects_content_quality_matches_pandas(server: Any, content: pd.DataFrame, project_id: str) -> None:
    actual = named(server, "projects.content_quality", project_id=project_id)
    assert_frame_close(actual, expected_content_quality(content, project_id))


def test_catalog_projects_content_quality_unknown_project_is_empty(server: Any) -> None:
    assert named(server, "projects.content_quality", project_id="no-such-project").empty


# -- projects.comparison ---------------------------------------------------------------------


def expected_comparison(cdx: pd.DataFrame, content: pd.DataFrame, project_ids: list[str] | None) -> pd.DataFrame:
    c = cdx[cdx["project_id"].notna()]
    a = content[content["project_id"].notna()]
    if project_ids is not None:
        c = c[c["project_id"].isin(project_ids)]
        a = a[a["project_id"].isin(project_ids)]
    g = c.groupby("project_id")
    captures = pd.DataFrame(
        {
            "captures": g.size(),
            "domains": g["domain"].nunique(),
            "unique_urls": g["original_url"].nunique(),
            "total_bytes": g["content_length"].sum(),
            "first_capture": g["captured_at"].min(),
            "last_capture": g["captured_at"].max(),
        }
    )
    h = a.groupby("project_id")
    pages = pd.DataFrame({"content_pages": h.size(), "avg_quality_score": h["quality_score"].mean()})
    out = captures.join(pages, how="outer").sort_index().rename_axis("project_id").reset_index()
    return out[
        [
            "project_id",
            "captures",
            "domains",
            "unique_urls",
            "total_bytes",
            "content_pages",
            "avg_quality_score",
            "first_capture",
            "last_capture",
        ]
    ]


@pytest.mark.parametrize(
    "project_ids", [None, ["proj-001"], ["proj-003", "proj-011", "no-such-project"], "proj-002,proj-007"]
)
def test_catalog_projects_comparison_matches_pandas(
    server: Any, cdx: pd.DataFrame, content: pd.DataFrame, project_ids: list[str] | str | None
) -> None:
    actual = named(server, "projects.comparison", project_ids=project_ids)
    wanted = project_ids.split(",") if isinstance(project_ids, str) else project_ids
    assert_frame_close(actual, expected_comparison(cdx, content, wanted))


def test_catalog_projects_comparison_project_ids_filter_rows(server: Any) -> None:
    everything = named(server, "projects.comparison")
    assert len(everything) == 12
    some = named(server, "projects.comparison", project_ids=["proj-009", "proj-002"])
    assert list(some["project_id"]) == ["proj-002", "proj-009"]
    expected = everything[everything["project_id"].isin(["proj-002", "proj-009"])]
    assert_frame_close(some, expected)


# -- content.quality_distribution ------------------------------------------------------------


def expected_distribution(content: pd.DataFrame, project_id: str | None, bins: int) -> pd.DataFrame:
    q = _project(content, project_id)["quality_score"].dropna().to_numpy(dtype=np.float32)
    index = np.clip(np.floor(q * np.float32(bins)), 0, bins - 1).astype(np.int64)
    pages = np.bincount(index, minlength=bins)
    return pd.DataFrame(
        {
            "bin": np.arange(bins),
            "bin_start": np.arange(bins) / bins,
            "bin_end": np.arange(1, bins + 1) / bins,
            "pages": pages,
            "share": pages / len(q) if len(q) else np.zeros(bins),
        }
    )


@pytest.mark.parametrize(("project_id", "bins"), [(None, 10), (None, 100), ("proj-003", 7), ("proj-010", 2)])
def test_catalog_content_quality_distribution_matches_pandas(
    server: Any, content: pd.DataFrame, project_id: str | None, bins: int
) -> None:
    actual = named(server, "content.quality_distribution", project_id=project_id, bins=bins)
    assert_frame_close(actual, expected_distribution(content, project_id, bins))
    assert actual["share"].sum() == pytest.approx(1.0)


def test_catalog_content_quality_distribution_keeps_empty_bins(server: Any, content: pd.DataFrame) -> None:
    actual = named(server, "content.quality_distribution", bins=100)
    assert list(actual["bin"]) == list(range(100))
    assert (actual["pages"] == 0).any(), "demo scores never reach the lowest bins"
    nobody = named(server, "content.quality_distribution", project_id="no-such-project", bins=5)
    assert list(nobody["pages"]) == [0] * 5 and list(nobody["share"]) == [0.0] * 5


def test_catalog_content_quality_distribution_project_filter_restricts_pages(
    server: Any, content: pd.DataFrame
) -> None:
    everything = named(server, "content.quality_distribution")
    project = named(server, "content.quality_distribution", project_id="proj-004")
    assert everything["pages"].sum() == content["quality_score"].notna().sum()
    assert project["pages"].sum() == (content["project_id"] == "proj-004").sum() < everything["pages"].sum()


# -- content.extraction_performance ----------------------------------------------------------


def expected_extraction(content: pd.DataFrame, since: str | None, project_id: str | None) -> pd.DataFrame:
    c = _project(content, project_id)
    if since is not None:
        c = c[c["created_at"] >= pd.Timestamp(since)]
    rows = []
    for method, m in c.groupby("extraction_method"):
        t = m["processing_time"].astype("float64")
        rows.append(
            {
                "extraction_method": method,
                "pages": len(m),
                "avg_processing_time_s": t.mean(),
                "p50_processing_time_s": quantile(t, 0.5),
                "p95_processing_time_s": quantile(t, 0.95),
                "avg_content_size": m["content_size"].mean(),
                "throughput_bytes_per_s": m["content_size"].astype("float64").sum() / t.sum(),
            }
        )
    return pd.DataFrame(rows).sort_values(["pages", "extraction_method"], ascending=[False, True])


@pytest.mark.parametrize(
    ("since", "project_id"),
    [(None, None), ("2018-01-01", None), (None, "proj-002"), ("2024-07-01", "proj-008")],
)
def test_catalog_content_extraction_performance_matches_pandas(
    server: Any, content: pd.DataFrame, since: str | None, project_id: str | None
) -> None:
    actual = named(server, "content.extraction_performance", since=since, project_id=project_id)
    assert_frame_close(actual, expected_extraction(content, since, project_id))


def test_catalog_content_extraction_performance_since_filters_pages(server: Any, content: pd.DataFrame) -> None:
    everything = named(server, "content.extraction_performance")
    recent = named(server, "content.extraction_performance", since="2023-01-01")
    assert 0 < recent["pages"].sum() < everything["pages"].sum()
    assert recent["pages"].sum() == (content["created_at"] >= "2023-01-01").sum()


# -- content.language_analysis ---------------------------------------------------------------


def expected_languages(content: pd.DataFrame, project_id: str | None, min_pages: int) -> pd.DataFrame:
    c = _project(content, project_id)
    g = c.groupby("language", dropna=False)
    out = pd.DataFrame(
        {
            "pages": g.size(),
            "share": g.size() / len(c),
            "avg_word_count": g["word_count"].mean(),
            "avg_quality_score": g["quality_score"].mean(),
            "avg_entity_count": g["entity_count"].mean(),
        }
    ).reset_index()
    out = out[out["pages"] >= min_pages]
    return out.sort_values(["pages", "language"], ascending=[False, True], na_position="last")


@pytest.mark.parametrize(("project_id", "min_pages"), [(None, 1), (None, 1000), ("proj-001", 1), ("proj-009", 20)])
def test_catalog_content_language_analysis_matches_pandas(
    server: Any, content: pd.DataFrame, project_id: str | None, min_pages: int
) -> None:
    actual = named(server, "content.language_analysis", project_id=project_id, min_pages=min_pages)
    assert_frame_close(actual, expected_languages(content, project_id, min_pages))


def test_catalog_content_language_analysis_min_pages_drops_rare_languages(server: Any) -> None:
    everything = named(server, "content.language_analysis")
    common = named(server, "content.language_analysis", min_pages=1000)
    assert 0 < len(common) < len(everything)
    assert (common["pages"] >= 1000).all()
    assert everything["share"].sum() == pytest.approx(1.0)


# -- content.entity_analytics ----------------------------------------------------------------


def expected_entities(content: pd.DataFrame, project_id: str | None, group_by: str) -> pd.DataFrame:
    rows = []
    for key, c in _project(content, project_id).groupby(group_by):
        entities = c["entity_count"].astype("float64")
        rows.append(
            {
                "group_key": key,
                "pages": len(c),
                "total_entities": entities.sum(),
                "avg_entities_per_page": entities.mean(),
                "entities_per_1000_words": 1000 * entities.sum() / c["word_count"].astype("float64").sum(),
                "p90_entity_count": quantile(entities, 0.9),
            }
        )
    return pd.DataFrame(rows).sort_values(["pages", "group_key"], ascending=[False, True])


@pytest.mark.parametrize(
    ("project_id", "group_by"),
    [
        (None, "language"),
        (None, "extraction_method"),
        ("proj-005", "language"),
        ("proj-011", "extraction_method"),
    ],
)
def test_catalog_content_entity_analytics_matches_pandas(
    server: Any, content: pd.DataFrame, project_id: str | None, group_by: str
) -> None:
    actual = named(server, "content.entity_analytics", project_id=project_id, group_by=group_by)
    assert_frame_close(actual, expected_entities(content, project_id, group_by))


def test_catalog_content_entity_analytics_project_filter_restricts_pages(server: Any, content: pd.DataFrame) -> None:
    everything = named(server, "content.entity_analytics", group_by="extraction_method")
    project = named(server, "content.entity_analytics", group_by="extraction_method", project_id="proj-003")
    assert project["pages"].sum() == (content["project_id"] == "proj-003").sum() < everything["pages"].sum()


# -- system.performance ----------------------------------------------------------------------


def _recent(metrics: pd.DataFrame, hours: int) -> pd.DataFrame:
    return metrics[metrics["timestamp"] > metrics["timestamp"].max() - pd.Timedelta(hours=hours)]


def expected_performance(metrics: pd.DataFrame, metric_type: str | None, interval: str, hours: int) -> pd.DataFrame:
    m = _recent(metrics, hours)
    if metric_type is not None:
        m = m[m["metric_type"] == metric_type]
    engines = [
        json.loads(dims)["engine"] if kind == "query_time_ms" else None
        for kind, dims in zip(m["metric_type"], m["dimensions"], strict=True)
    ]
    m = m.assign(bucket_start=m["timestamp"].dt.floor(FLOOR_FREQ[interval]), engine=engines)
    rows = [
        {
            "bucket_start": bucket,
            "metric_type": kind,
            "engine": None if pd.isna(engine) else engine,
            "samples": len(g),
            "avg_value": g["value"].mean(),
            "p95_value": quantile(g["value"], 0.95),
            "max_value": g["value"].max(),
        }
        for (bucket, kind, engine), g in m.groupby(["bucket_start", "metric_type", "engine"], dropna=False)
    ]
    out = pd.DataFrame(rows)
    return out.sort_values(["bucket_start", "metric_type", "engine"], na_position="first")


@pytest.mark.parametrize(
    ("metric_type", "interval", "hours"),
    [
        (None, "hour", 24),
        (None, "minute", 2),
        ("query_time_ms", "day", 720),
        ("query_time_ms", "hour", 48),
        ("cpu_percent", "day", 100),
        ("error_rate", "minute", 1),
    ],
)
def test_catalog_system_performance_matches_pandas(
    server: Any, metrics: pd.DataFrame, metric_type: str | None, interval: str, hours: int
) -> None:
    actual = named(server, "system.performance", metric_type=metric_type, interval=interval, hours=hours)
    assert_frame_close(actual, expected_performance(metrics, metric_type, interval, hours))


def test_catalog_system_performance_filters_metric_and_splits_engines(server: Any, metrics: pd.DataFrame) -> None:
    everything = named(server, "system.performance", hours=720, interval="day")
    queries = named(server, "system.performance", hours=720, interval="day", metric_type="query_time_ms")
    assert set(everything["metric_type"]) == set(metrics["metric_type"])
    assert set(queries["metric_type"]) == {"query_time_ms"}
    assert set(queries["engine"]) == {"duckdb", "postgres"}
    assert everything.loc[everything["metric_type"] != "query_time_ms", "engine"].isna().all()
    assert everything["samples"].sum() == len(metrics)
    day = named(server, "system.performance", hours=24)
    assert day["samples"].sum() == len(_recent(metrics, 24)) == 24 * 12 * metrics["metric_type"].nunique()


# -- system.resource_usage -------------------------------------------------------------------


def expected_resources(metrics: pd.DataFrame, hours: int) -> pd.DataFrame:
    m = _recent(metrics, hours)
    m = m[m["metric_type"].isin(["cpu_percent", "memory_percent", "disk_percent"])]
    m = m.assign(hour_start=m["timestamp"].dt.floor("h"))
    table = m.pivot_table(index="hour_start", columns="metric_type", values="value", aggfunc=["mean", "max"])
    out = pd.DataFrame(index=table.index)
    for kind in ("cpu", "memory", "disk"):
        out[f"avg_{kind}_percent"] = table[("mean", f"{kind}_percent")]
        out[f"max_{kind}_percent"] = table[("max", f"{kind}_percent")]
    out["over_80"] = (out[["max_cpu_percent", "max_memory_percent", "max_disk_percent"]] > 80).any(axis=1)
    return out.sort_index().reset_index()


@pytest.mark.parametrize("hours", [1, 24, 720])
def test_catalog_system_resource_usage_matches_pandas(server: Any, metrics: pd.DataFrame, hours: int) -> None:
    actual = named(server, "system.resource_usage", hours=hours)
    assert_frame_close(actual, expected_resources(metrics, hours))
    assert len(actual) == hours


# -- system.health_metrics -------------------------------------------------------------------


def _bytes(text: str) -> float:
    number, unit = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text).groups()  # type: ignore[union-attr]
    scale = {
        "": 1,
        "b": 1,
        "kb": 1e3,
        "mb": 1e6,
        "gb": 1e9,
        "tb": 1e12,
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
    }[unit.lower()]
    return float(number) * scale


def test_catalog_system_health_metrics_matches_tables_and_settings(
    server: Any, cdx: pd.DataFrame, content: pd.DataFrame, metrics: pd.DataFrame
) -> None:
    actual = named(server, "system.health_metrics")
    assert list(actual.columns) == ["component", "metric", "value", "unit"]
    assert actual["value"].dtype == np.float64
    assert not actual.duplicated(["component", "metric"]).any()
    assert list(zip(actual["component"], actual["metric"], strict=True)) == sorted(
        zip(actual["component"], actual["metric"], strict=True)
    )
    values = {(c, m): v for c, m, v in zip(actual["component"], actual["metric"], actual["value"], strict=True)}

    # duckdb_tables(): estimated rows equal the real row counts after the demo load
    for table, frame in (
        ("cdx_records", cdx),
        ("content_analytics", content),
        ("performance_metrics", metrics),
    ):
        assert values[(f"table.{table}", "estimated_rows")] == len(frame)

    # latest sample of every metric type (one series per type in the demo data)
    latest = metrics[metrics["timestamp"] == metrics.groupby("metric_type")["timestamp"].transform("max")]
    expected_latest = latest.groupby("metric_type")["value"].mean()
    got_latest = actual[actual["component"] == "metrics.latest"].set_index("metric")["value"]
    pd.testing.assert_series_equal(got_latest.sort_index(), expected_latest.sort_index(), check_names=False, rtol=RTOL)

    # duckdb_memory() / pragma_database_size() / duckdb_temporary_files(): consistent figures
    assert values[("duckdb.memory", "memory_in_use")] > 0
    limit = _bytes(server.app.settings.duckdb.memory_limit)
    assert values[("duckdb.memory", "memory_limit")] == pytest.approx(limit, rel=0.05)
    assert values[("duckdb.memory", "memory_usage_ratio")] == pytest.approx(
        values[("duckdb.memory", "memory_in_use")] / values[("duckdb.memory", "memory_limit")]
    )
    block, total, used, free = (
        values[("duckdb.storage", m)] for m in ("block_size", "total_blocks", "used_blocks", "free_blocks")
    )
    assert block > 0 and used + free == total
    assert values[("duckdb.storage", "database_size")] == block * total
    assert values[("duckdb.storage", "wal_size")] >= 0
    assert values[("duckdb.spill", "temporary_files")] >= 0 and values[("duckdb.spill", "spilled_bytes")] >= 0
    units = dict(zip(actual["metric"], actual["unit"], strict=True))
    assert units["query_time_ms"] == "ms" and units["cpu_percent"] == "percent"
    assert units["cache_hit_ratio"] == "ratio" and units["requests_per_second"] == "per_second"
