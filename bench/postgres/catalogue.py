"""B5: every named query of the catalogue on DuckDB vs the same query on PostgreSQL."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pyarrow as pa

from flight_server.catalog import NamedQuery, load_catalog

from bench.common import PROJECT_ROOT, Result, fmt_ms, geomean, log, median
from bench.postgres.databases import PgPlan
from bench.postgres.servers import FlightFailure, Server

# Values for the required parameters of named queries (the rest keep their defaults).
NAMED_PARAMS: dict[str, Any] = {"domain": "example.com", "project_id": "proj-001"}
B5_TARGET = 10.0


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
        baseline=f"PostgreSQL (engine hint, sqlglot translation): geomean {fmt_ms(base_gm)}",
        candidate=f"DuckDB (engine hint): geomean {fmt_ms(cand_gm)}",
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
                f"PostgreSQL {fmt_ms(median(case.baseline_s))}",
                f"{'hybrid' if case.candidate_engine != 'duckdb' else 'DuckDB'} {fmt_ms(median(case.candidate_s))}",
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
