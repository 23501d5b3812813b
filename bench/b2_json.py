"""B2: one million rows into pandas, HTTP JSON API (the old way) vs Flight DoGet.

The JSON side is bench/json_api.py in its own process over a copy of the database:
`httpx` fetches the array, `pd.DataFrame(orjson.loads(body))` builds the frame. All
of its serializers are measured and the fastest one is the baseline. The Flight side is
`do_get(ticket).read_all().to_pandas()` against the server under test.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from dataclasses import dataclass

import httpx
import orjson
import pandas as pd
import pyarrow.flight as flight

from bench.b1_b4_core import bulk_ticket
from bench.common import PROJECT_ROOT, BenchContext, Result, ServerProcess, free_port, log, median

B2_ROWS = 1_000_000
B2_TARGET = 30.0
SETTLE_S = 1.0


@dataclass
class Run:
    seconds: float
    fetch_s: float  # until the whole body / Arrow table is in the client
    decode_s: float  # orjson.loads (JSON only)
    frame_s: float  # DataFrame construction / to_pandas
    rows: int
    body_bytes: int = 0


class JsonServer(ServerProcess):
    def __init__(self, ctx: BenchContext) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "bench.json_api", "--db", str(ctx.data.baseline_db)]
        argv += ["--port", str(self.port), "--threads", str(os.cpu_count() or 1)]
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        super().__init__("json-api", argv, env, ctx.run_dir / "json_api.log")

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        started = time.perf_counter()
        while True:
            self.check_alive()
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.perf_counter() - started > timeout_s:
                self.stop()
                raise TimeoutError("JSON API not ready")
            time.sleep(0.1)


def json_once(http: httpx.Client, url: str, serializer: str, limit: int) -> Run:
    started = time.perf_counter()
    response = http.get(f"{url}/api/v1/cdx/records", params={"limit": limit, "serializer": serializer})
    response.raise_for_status()
    body = response.content
    fetched = time.perf_counter()
    records = orjson.loads(body)
    decoded = time.perf_counter()
    frame = pd.DataFrame(records)
    done = time.perf_counter()
    run = Run(done - started, fetched - started, decoded - fetched, done - decoded, len(frame), len(body))
    del frame, records, body, response
    gc.collect()
    return run


def flight_once(client: flight.FlightClient, ticket: flight.Ticket) -> Run:
    started = time.perf_counter()
    table = client.do_get(ticket).read_all()
    fetched = time.perf_counter()
    frame = table.to_pandas()
    done = time.perf_counter()
    run = Run(done - started, fetched - started, 0.0, done - fetched, len(frame))
    del frame, table
    gc.collect()
    return run


def run_b2(ctx: BenchContext) -> list[Result]:
    reps = ctx.plan.b2_reps
    serializers = ctx.plan.b2_serializers
    limit = min(B2_ROWS, ctx.data.rows)
    sql = f"SELECT * FROM cdx_records LIMIT {limit}"
    ticket = bulk_ticket(sql)
    api = JsonServer(ctx)
    client = flight.connect(ctx.server.location)
    try:
        api.wait_ready()
        with httpx.Client(timeout=None, trust_env=False) as http:
            log("B2: warm-up")
            warm = http.get(f"{api.url}/api/v1/cdx/records", params={"limit": limit, "serializer": "polars"})
            warm.raise_for_status()
            del warm
            flight_once(client, ticket)
            json_runs: dict[str, list[Run]] = {name: [] for name in serializers}
            flight_runs: list[Run] = []
            for rep in range(reps):
                order = [*serializers, "flight"]
                if rep % 2:
                    order.reverse()
                for side in order:
                    time.sleep(SETTLE_S)  # let the previous side's processes finish freeing memory
                    if side == "flight":
                        flight_runs.append(flight_once(client, ticket))
                    else:
                        json_runs[side].append(json_once(http, api.url, side, limit))
                log(
                    f"B2 rep {rep + 1}/{reps}: "
                    + ", ".join(f"JSON/{s} {json_runs[s][-1].seconds:.2f} s" for s in serializers)
                    + f", Flight {flight_runs[-1].seconds:.3f} s"
                )
    finally:
        client.close()
        api.stop()

    rows = flight_runs[0].rows
    for runs in (*json_runs.values(), flight_runs):
        if any(r.rows != limit for r in runs):
            raise RuntimeError(f"B2: a side returned {runs[0].rows} rows, expected {limit}")
    best = min(serializers, key=lambda s: median([r.seconds for r in json_runs[s]]))
    ratios = [j.seconds / f.seconds for j, f in zip(json_runs[best], flight_runs, strict=True)]
    ratio = median(ratios)
    base = json_runs[best]
    flight_s = median([r.seconds for r in flight_runs])
    base_s = median([r.seconds for r in base])

    def breakdown(runs: list[Run]) -> dict[str, float]:
        return {
            "total_s": median([r.seconds for r in runs]),
            "fetch_s": median([r.fetch_s for r in runs]),
            "decode_s": median([r.decode_s for r in runs]),
            "frame_s": median([r.frame_s for r in runs]),
        }

    details: dict[str, object] = {
        "rows": rows,
        "json_body_bytes": base[0].body_bytes,
        "baseline_serializer": best,
        "ratios": ratios,
        "flight": breakdown(flight_runs),
    }
    for name in serializers:
        details[f"json_{name}"] = breakdown(json_runs[name])
    details["notes"] = (
        "ratio = JSON seconds / Flight seconds, paired per repetition, for the fastest JSON serializer; "
        "fetch = until the body/table is in the client (includes the server's query and serialization), "
        "decode = orjson.loads, frame = pd.DataFrame(records) or Table.to_pandas()."
    )
    return [
        Result(
            benchmark="B2",
            title=f"{rows:,} rows into pandas: HTTP JSON API vs Flight",
            baseline=f"Starlette/uvicorn JSON ({best}) + httpx + pandas: {base_s:.2f} s "
            f"({rows / base_s / 1e3:.0f} k rows/s)",
            candidate=f"Flight DoGet read_all().to_pandas(): {flight_s:.3f} s ({rows / flight_s / 1e6:.2f} M rows/s)",
            ratio=ratio,
            ratio_text=f"{ratio:.1f}x faster",
            target=f">= {B2_TARGET:.0f}x",
            met=ratio >= B2_TARGET,
            repetitions=reps,
            details=details,
        )
    ]
