"""B3: a small named query, one DoGet with the command JSON as its ticket.

Latency: p50/p99 of sequential round trips from one client in this process.
Throughput: queries/s of 8 concurrent clients vs one, each client its own process with
its own FlightClient (a client holds the GIL while it decodes), all started together
at an agreed wall-clock time and stopped at another. The server's CPU time is read
from /proc for each phase, to show where the time goes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from dataclasses import dataclass
from multiprocessing.pool import Pool
from typing import Any

import psutil
import pyarrow.flight as flight

from bench.common import BenchContext, Result, log, median, percentile

B3_COMMAND: dict[str, Any] = {"query": "domains.statistics", "params": {"domain": "example.com"}}
B3_TARGET = 1.6
_WARMUP_CALLS = 20
_BYPASS_CALLS = 30

_client: flight.FlightClient | None = None


def _init_worker(location: str) -> None:
    global _client
    _client = flight.connect(location)


def _call(client: flight.FlightClient, ticket: flight.Ticket) -> int:
    return int(client.do_get(ticket).read_all().num_rows)


def _warm_worker(ticket_bytes: bytes) -> int:
    assert _client is not None
    return _call(_client, flight.Ticket(ticket_bytes))


def _timed_loop(args: tuple[bytes, float, float]) -> tuple[float, float]:
    """Calls from `start_at` to `end_at` (wall clock): (completed calls, client CPU seconds).

    A call that straddles the end counts for the share of it inside the window.
    """
    ticket_bytes, start_at, end_at = args
    assert _client is not None
    ticket = flight.Ticket(ticket_bytes)
    while (wait := start_at - time.time()) > 0:
        time.sleep(min(wait, 0.01))
    cpu_started = time.process_time()
    done = 0.0
    while True:
        began = time.time()
        if began >= end_at:
            break
        _call(_client, ticket)
        ended = time.time()
        if ended > end_at:
            done += (end_at - began) / (ended - began)
            break
        done += 1
    return done, time.process_time() - cpu_started


def _cpu_seconds(ctx: BenchContext) -> float:
    return ctx.server.cpu_seconds()


@dataclass
class Phase:
    clients: int
    seconds: float
    queries: float
    server_cpu_s: float
    client_cpu_s: float
    machine_cpu_s: float  # every process on the machine, this run's included, over span_s
    span_s: float  # wall time of the whole phase, start-up wait included

    @property
    def qps(self) -> float:
        return self.queries / self.seconds

    def cpu_ms_per_query(self, cpu_s: float) -> float:
        return cpu_s * 1e3 / max(self.queries, 1.0)

    @property
    def cores_busy(self) -> float:
        """Cores kept busy by the server and the clients together."""
        return (self.server_cpu_s + self.client_cpu_s) / self.seconds

    @property
    def cores_busy_others(self) -> float:
        """Cores kept busy by other processes on the machine (noise)."""
        return max(0.0, self.machine_cpu_s - self.server_cpu_s - self.client_cpu_s) / self.span_s


def _phase(pool: Pool, ctx: BenchContext, ticket: bytes, clients: int) -> Phase:
    seconds = ctx.plan.b3_seconds
    start_at = time.time() + 0.5
    cpu_before, machine_before, began = _cpu_seconds(ctx), _machine_busy_seconds(), time.perf_counter()
    counts = pool.map(_timed_loop, [(ticket, start_at, start_at + seconds)] * clients, chunksize=1)
    span = time.perf_counter() - began
    server_cpu, machine = _cpu_seconds(ctx) - cpu_before, _machine_busy_seconds() - machine_before
    queries, clients_cpu = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return Phase(clients, seconds, queries, server_cpu, clients_cpu, machine, span)


def _machine_busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _latencies(client: flight.FlightClient, ticket: flight.Ticket, calls: int, cap_s: float) -> list[float]:
    deadline = time.perf_counter() + cap_s
    latencies: list[float] = []
    for _ in range(calls):
        if time.perf_counter() > deadline:
            break
        began = time.perf_counter()
        rows = _call(client, ticket)
        latencies.append(time.perf_counter() - began)
        if rows != 1:
            raise RuntimeError(f"B3: domains.statistics returned {rows} rows, expected 1")
    return latencies


def run_b3(ctx: BenchContext) -> list[Result]:
    plan = ctx.plan
    ticket_bytes = json.dumps(B3_COMMAND).encode()
    ticket = flight.Ticket(ticket_bytes)
    bypass = flight.Ticket(json.dumps({**B3_COMMAND, "cache": "bypass"}).encode())

    # -- latency -------------------------------------------------------------------------
    client = flight.connect(ctx.server.location)
    try:
        reader = client.do_get(ticket)
        first = reader.read_chunk()
        first_metadata = json.loads(first.app_metadata.to_pybytes()) if first.app_metadata else {}
        reader.read_all()
        for _ in range(_WARMUP_CALLS):
            _call(client, ticket)
        cpu_before = _cpu_seconds(ctx)
        latencies = _latencies(client, ticket, plan.b3_calls, plan.b3_latency_cap_s)
        latency_cpu = (_cpu_seconds(ctx) - cpu_before) / len(latencies)
        # The same query without the result cache: what DuckDB itself costs.
        cpu_before = _cpu_seconds(ctx)
        engine = _latencies(client, bypass, _BYPASS_CALLS, plan.b3_latency_cap_s / 4)
        engine_cpu = (_cpu_seconds(ctx) - cpu_before) / len(engine)
    finally:
        client.close()
    p50, p99 = percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3
    log(
        f"B3 latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(latencies)} calls; "
        f"cache bypassed: p50 {percentile(engine, 50) * 1e3:.1f} ms over {len(engine)} calls"
    )

    # -- throughput ----------------------------------------------------------------------
    n = plan.b3_clients
    spawn = mp.get_context("spawn")
    one: list[Phase] = []
    many: list[Phase] = []
    with spawn.Pool(n, initializer=_init_worker, initargs=(ctx.server.location,)) as pool:
        pool.map(_warm_worker, [ticket_bytes] * (2 * n), chunksize=1)
        for rep in range(plan.b3_reps):
            for clients in (1, n) if rep % 2 == 0 else (n, 1):
                (one if clients == 1 else many).append(_phase(pool, ctx, ticket_bytes, clients))
            log(f"B3 rep {rep + 1}/{plan.b3_reps}: 1 client {one[-1].qps:.1f} q/s, {n} clients {many[-1].qps:.1f} q/s")
    ratios = [m.qps / o.qps for m, o in zip(many, one, strict=True)]
    ratio = median(ratios)
    cache = first_metadata.get("cache", "?")
    return [
        Result(
            benchmark="B3a",
            title="named query `domains.statistics` round trip (one DoGet, command as ticket)",
            baseline="—",
            candidate=f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
            ratio=None,
            ratio_text="—",
            target="report",
            met=None,
            repetitions=len(latencies),
            details={
                "calls": len(latencies),
                "calls_planned": plan.b3_calls,
                "time_cap_s": plan.b3_latency_cap_s,
                "warmup_calls": _WARMUP_CALLS,
                "p50_ms": p50,
                "p90_ms": percentile(latencies, 90) * 1e3,
                "p99_ms": p99,
                "max_ms": max(latencies) * 1e3,
                "cache_status_first_call": cache,
                "server_cpu_ms_per_query": latency_cpu * 1e3,
                "cache_bypass_calls": len(engine),
                "cache_bypass_p50_ms": percentile(engine, 50) * 1e3,
                "cache_bypass_p99_ms": percentile(engine, 99) * 1e3,
                "cache_bypass_server_cpu_ms_per_query": engine_cpu * 1e3,
                "notes": "sequential calls from one FlightClient in the harness process, default cache mode "
                "(as a dashboard would call it); stops early at the time cap.",
            },
        ),
        Result(
            benchmark="B3b",
            title=f"`domains.statistics` throughput, {n} concurrent client processes vs 1",
            baseline=f"1 client: {median([p.qps for p in one]):.1f} q/s",
            candidate=f"{n} clients: {median([p.qps for p in many]):.1f} q/s",
            ratio=ratio,
            ratio_text=f"{ratio:.2f}x",
            target=f">= {B3_TARGET:.1f}x",
            met=ratio >= B3_TARGET,
            repetitions=plan.b3_reps,
            details={
                "seconds_per_phase": plan.b3_seconds,
                "qps_1_client": [p.qps for p in one],
                f"qps_{n}_clients": [p.qps for p in many],
                "ratios": ratios,
                "server_cpu_ms_per_query_1_client": [p.cpu_ms_per_query(p.server_cpu_s) for p in one],
                f"server_cpu_ms_per_query_{n}_clients": [p.cpu_ms_per_query(p.server_cpu_s) for p in many],
                "client_cpu_ms_per_query_1_client": [p.cpu_ms_per_query(p.client_cpu_s) for p in one],
                f"client_cpu_ms_per_query_{n}_clients": [p.cpu_ms_per_query(p.client_cpu_s) for p in many],
                "cores_busy_1_client": [p.cores_busy for p in one],
                f"cores_busy_{n}_clients": [p.cores_busy for p in many],
                "cores_busy_other_processes_1_client": [p.cores_busy_others for p in one],
                f"cores_busy_other_processes_{n}_clients": [p.cores_busy_others for p in many],
                "notes": "each client a separate process with its own FlightClient, all on the same "
                "machine as the server (clients and server share the cores); phases interleaved. "
                "cores_busy = (server + client CPU) / phase; other processes = the rest of the machine's "
                "busy time (noise from whatever else runs).",
            },
        ),
    ]
