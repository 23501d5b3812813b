"""B9: L2 hit vs miss of the catalogue's heavy aggregations, on a server with L1 off."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import redis

from flight_server.cache.redis_store import decode_table, encode_table

from bench.cache.harness import DEFAULT_CODEC, CacheContext, expect, fetch, ticket, to_ms
from bench.common import Result, geomean, log, median

B9_QUERIES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("domains.top", {}),
    ("domains.timeline", {"domain": "example.com"}),
    ("domains.coverage", {"domain": "example.com"}),
    ("projects.comparison", {}),
    ("content.quality_distribution", {}),
    ("content.language_analysis", {}),
)
B9_TARGET = 10.0


@dataclass
class QueryRuns:
    name: str
    params: dict[str, Any]
    miss_s: list[float] = field(default_factory=list)
    hit_s: list[float] = field(default_factory=list)  # per repetition: median of its hits
    rows: int = 0
    nbytes: int = 0

    @property
    def ratios(self) -> list[float]:
        return [m / h for m, h in zip(self.miss_s, self.hit_s, strict=True)]


def _timed_fetch(client: flight.FlightClient, tkt: flight.Ticket, wanted: str, what: str) -> tuple[float, pa.Table]:
    began = time.perf_counter()
    table, status = fetch(client, tkt)
    elapsed = time.perf_counter() - began
    expect(status, wanted, what)
    return elapsed, table


def _inproc_l2_hit(client: redis.Redis, key: str, table: pa.Table, reps: int = 5) -> dict[str, float]:
    """GET + decode of the same table as an L2 value (default codec), timed in this process."""
    value = encode_table(table, DEFAULT_CODEC)
    client.set(key, value)
    gets, decodes = [], []
    try:
        for _ in range(reps):
            began = time.perf_counter()
            got = client.get(key)
            middle = time.perf_counter()
            assert isinstance(got, bytes)
            decode_table(got)
            gets.append(middle - began)
            decodes.append(time.perf_counter() - middle)
    finally:
        client.delete(key)
    return {"value_bytes": len(value), "get_ms": to_ms(median(gets)), "decode_ms": to_ms(median(decodes))}


def run_b9(ctx: CacheContext) -> list[Result]:
    server, plan = ctx.servers.l2, ctx.plan
    client = flight.connect(server.location)
    runs = [QueryRuns(name, params) for name, params in B9_QUERIES]
    try:
        for run in runs:  # warm-up: DuckDB's buffers, the entry in Redis, the connection
            command = {"query": run.name, "params": run.params}
            _, table = _timed_fetch(client, ticket(command, "refresh"), "miss", f"B9 {run.name} warm-up")
            _timed_fetch(client, ticket(command, "use"), "hit-l2", f"B9 {run.name} warm-up")
            run.rows, run.nbytes = table.num_rows, table.nbytes
            ctx.tables.setdefault(f"named:{run.name}", table)
        for rep in range(plan.b9_reps):
            for i in range(len(runs)):
                run = runs[(i + rep) % len(runs)]
                command = {"query": run.name, "params": run.params}
                refresh, use = ticket(command, "refresh"), ticket(command, "use")
                for step in ("miss", "hits") if rep % 2 == 0 else ("hits", "miss"):
                    if step == "miss":
                        run.miss_s.append(_timed_fetch(client, refresh, "miss", f"B9 {run.name} miss")[0])
                    else:
                        times = [
                            _timed_fetch(client, use, "hit-l2", f"B9 {run.name} hit")[0] for _ in range(plan.b9_hits)
                        ]
                        run.hit_s.append(median(times))
            log(
                f"B9 rep {rep + 1}/{plan.b9_reps}: "
                + ", ".join(f"{r.name} {to_ms(r.miss_s[-1]):.0f}/{to_ms(r.hit_s[-1]):.1f} ms" for r in runs)
            )
        breakdown = {
            r.name: _inproc_l2_hit(ctx.redis, f"{ctx.servers.redis_prefix}bench:b9", ctx.tables[f"named:{r.name}"])
            for r in runs
        }
    finally:
        client.close()

    results: list[Result] = []
    per_query: dict[str, float] = {}
    for run in runs:
        ratio = median(run.ratios)
        per_query[run.name] = ratio
        miss_ms, hit_ms = to_ms(median(run.miss_s)), to_ms(median(run.hit_s))
        results.append(
            Result(
                benchmark="B9",
                title=f"L2 hit vs miss, `{run.name}` {json.dumps(run.params) if run.params else ''}".rstrip(),
                baseline=f"miss (`refresh`: run + store): {miss_ms:.1f} ms",
                candidate=f"L2 hit: {hit_ms:.2f} ms",
                ratio=ratio,
                ratio_text=f"{ratio:.1f}x faster",
                target=f">= {B9_TARGET:.0f}x",
                met=ratio >= B9_TARGET,
                repetitions=plan.b9_reps,
                details={
                    "rows": run.rows,
                    "arrow_bytes": run.nbytes,
                    "miss_ms": [to_ms(x) for x in run.miss_s],
                    "hit_ms": [to_ms(x) for x in run.hit_s],
                    "ratios": run.ratios,
                    "in_process_l2_hit": breakdown[run.name],
                },
            )
        )
    geo = geomean(list(per_query.values()))
    all_met = all(r >= B9_TARGET for r in per_query.values())
    results.append(
        Result(
            benchmark="B9",
            title=f"L2 hit vs miss, geometric mean over {len(runs)} named queries",
            baseline=f"miss: geomean {geomean([to_ms(median(r.miss_s)) for r in runs]):.1f} ms",
            candidate=f"L2 hit: geomean {geomean([to_ms(median(r.hit_s)) for r in runs]):.2f} ms",
            ratio=geo,
            ratio_text=f"{geo:.1f}x faster (min {min(per_query.values()):.1f}x)",
            target=f">= {B9_TARGET:.0f}x (geomean and each query)",
            met=geo >= B9_TARGET and all_met,
            repetitions=plan.b9_reps,
            details={
                "ratio_per_query": per_query,
                "notes": f"server with L1 off (FLIGHT_CACHE__L1_MAX_ENTRIES=0), Redis L2 with {DEFAULT_CODEC}. "
                "Per repetition "
                f"and query: one `refresh` (runs on DuckDB and stores in L2) and {plan.b9_hits} `use` calls "
                "(every one an L2 hit, checked in the first batch's metadata), the order alternating per "
                "repetition and the query order rotating; a repetition's hit time is the median of its hits; "
                "ratio = miss / hit per repetition, median over repetitions. One untimed refresh + hit of each "
                f"query first. in_process_l2_hit: the same result as a {DEFAULT_CODEC} L2 value, GET and decode_table "
                "timed in the harness process (the part of a hit that is Redis and decoding).",
            },
        )
    )
    return results
