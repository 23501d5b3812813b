"""Result-cache benchmarks: `python -m bench.cache [--rows N] [--quick]`.

- B8: L1 hit round trip of a small named query (`domains.statistics` for example.com,
  one DoGet with the command as its ticket), p50, vs the same query uncached
  (`"cache": "bypass"`); target: hit p50 <= 1.5 ms on loopback.
- B9: L2 hit vs miss of the catalogue's heavy aggregations, on a server with L1 off
  (`FLIGHT_CACHE__L1_MAX_ENTRIES=0`): miss = `"cache": "refresh"` (runs and stores),
  hit = `"cache": "use"`; target >= 10x faster (geometric mean and per query).
- B10: L2 hit of a ~50 MB result (`SELECT * FROM cdx_records LIMIT n`) on the L1-off
  server vs the same result from L1 on a second server; throughput, target >= 0.5x.
  Diagnostics: the same L2 hit from servers writing the other codecs' entries.
- B11: IPC encoding of typical results with none, LZ4 and ZSTD (`encode_table` /
  `decode_table`, in process): bytes, encode and decode time, and the Redis SET+GET
  round trip of each value; a recommended codec.

The servers run as `flight-server serve` processes side by side, each over its own copy
of the same demo data (DuckDB allows one process per file): L1+L2 (B8, B10's baseline),
L2 only (B9, B10), and diagnostic ones that show where time goes: L1 without Redis (B8),
L2 only with entries in each of the other codecs (B10). They share one Redis with a key
prefix unique to this run; every key under it is deleted at the end. Baselines and
candidates are interleaved over the repetitions (the order alternates or rotates) and
reported as medians.
Writes bench/results/cache.json and cache.md and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import redis

from flight_server.cache.redis_store import _HEADER, COMPRESSIONS, decode_table, encode_table
from flight_server.settings import RedisSettings

from bench import common
from bench.common import (
    DB_NAME,
    RESULTS_DIR,
    FlightServer,
    Result,
    _fingerprint,
    log,
    machine_info,
    median,
    percentile,
    prepare_data,
    server_command,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
# The server's default L2 codec: what the main servers run with (set explicitly, so the
# results say which); the other codecs run on diagnostic servers in B10.
DEFAULT_CODEC: str = RedisSettings.model_fields["compression"].default
OTHER_CODECS = tuple(c for c in COMPRESSIONS if c != DEFAULT_CODEC)
BENCH_ROOT = Path(tempfile.gettempdir()) / "chrono-flight-bench"
MIB = 1024 * 1024
MAX_ENTRY_BYTES = 128 * MIB  # B10's result must be cacheable

B8_COMMAND: dict[str, Any] = {"query": "domains.statistics", "params": {"domain": "example.com"}}
B8_TARGET_MS = 1.5
B9_QUERIES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("domains.top", {}),
    ("domains.timeline", {"domain": "example.com"}),
    ("domains.coverage", {"domain": "example.com"}),
    ("projects.comparison", {}),
    ("content.quality_distribution", {}),
    ("content.language_analysis", {}),
)
B9_TARGET = 10.0
B10_TARGET_BYTES = 50_000_000
B10_TARGET = 0.5
B10_STORE_ATTEMPTS = 3
DIAGNOSTIC_SOCKET_TIMEOUT_S = 5.0  # codec servers of B10: a timeout would hide the codec's cost
B11_AGGREGATE: dict[str, Any] = {"query": "domains.timeline", "params": {"domain": "example.com", "interval": "month"}}
B11_CDX_ROWS = 1_000_000
B11_CONTENT_ROWS = 500_000
B11_NEAR_FASTEST = 1.15  # codecs within 15% of the fastest hit path compete on bytes
B11_SAMPLE_S = 0.05  # small values are measured several times per repetition, up to ~this long
B11_MAX_INNER = 100


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _ms(seconds: float) -> float:
    return seconds * 1e3


# -- plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachePlan:
    """Repetitions of each benchmark."""

    b8_reps: int
    b8_hits: int  # L1 hits per repetition
    b8_bypass: int  # uncached calls per repetition
    b9_reps: int
    b9_hits: int  # L2 hits per query and repetition (their median is the rep's hit time)
    b10_reps: int
    b11_reps: int

    @classmethod
    def for_mode(cls, quick: bool) -> CachePlan:
        if quick:
            return cls(b8_reps=3, b8_hits=100, b8_bypass=10, b9_reps=3, b9_hits=3, b10_reps=3, b11_reps=2)
        return cls(b8_reps=5, b8_hits=200, b8_bypass=20, b9_reps=5, b9_hits=3, b10_reps=8, b11_reps=5)


# -- data --------------------------------------------------------------------------------


def _copy_db(src_dir: Path, dst_dir: Path) -> None:
    """Copy the DuckDB file (and its WAL, if any) and the ingested datasets."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in (DB_NAME, f"{DB_NAME}.wal"):
        (dst_dir / name).unlink(missing_ok=True)
        if (src_dir / name).exists():
            shutil.copyfile(src_dir / name, dst_dir / name)
    if (dst_dir / "datasets").exists():
        shutil.rmtree(dst_dir / "datasets")
    if (src_dir / "datasets").exists():
        shutil.copytree(src_dir / "datasets", dst_dir / "datasets")


def seed_from_shared(data_dir: Path, rows: int) -> bool:
    """Copy the core benchmarks' data set when it is the same one (same fingerprint).

    Saves regenerating millions of rows. The copy is made while holding DuckDB's shared
    (read-only) lock on the source, so it cannot be written meanwhile; a source in use
    by a server is left alone and the data is generated instead. True when copied.
    """
    fingerprint = _fingerprint(rows)
    marker = data_dir / "bench-data.json"
    if marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        return False  # already current: prepare_data reuses it
    shared = BENCH_ROOT / f"data-{rows}"
    shared_marker = shared / "bench-data.json"
    if not shared_marker.exists() or json.loads(shared_marker.read_text()).get("fingerprint") != fingerprint:
        return False
    try:
        lock = duckdb.connect(str(shared / DB_NAME), read_only=True)
    except duckdb.Error as exc:
        log(f"shared data set {shared} is in use ({str(exc).splitlines()[0][:120]}); generating instead")
        return False
    try:
        log(f"copying the current demo data set from {shared}")
        marker.unlink(missing_ok=True)
        _copy_db(shared, data_dir)
        shutil.copyfile(shared_marker, marker)
    finally:
        lock.close()
    return True


# -- Flight helpers ----------------------------------------------------------------------


def ticket(command: Mapping[str, Any], cache: str | None = None) -> flight.Ticket:
    body = dict(command) if cache is None else {**command, "cache": cache}
    return flight.Ticket(json.dumps(body).encode())


def fetch(client: flight.FlightClient, tkt: flight.Ticket) -> tuple[pa.Table, str]:
    """One DoGet read whole; the cache status from the first batch's metadata."""
    reader = client.do_get(tkt)
    first = reader.read_chunk()
    status = "?"
    if first.app_metadata is not None:
        status = str(json.loads(first.app_metadata.to_pybytes()).get("cache", "?"))
    rest = reader.read_all()
    return pa.Table.from_batches([first.data, *rest.to_batches()], schema=reader.schema), status


def expect(status: str, wanted: str, what: str) -> None:
    if status != wanted:
        raise RuntimeError(f"{what}: cache status {status!r}, expected {wanted!r}")


def cache_stats(client: flight.FlightClient) -> dict[str, Any]:
    results = list(client.do_action(flight.Action("cache.stats", b"")))
    payload: dict[str, Any] = json.loads(results[0].body.to_pybytes())
    return payload


@dataclass
class Servers:
    l1: FlightServer  # L1 on (the default), L2 on: B8's candidate, B10's baseline
    l2: FlightServer  # L1 off: every hit is an L2 hit (B9, B10's candidate)
    l1_no_redis: FlightServer  # diagnostic: L1 only, no Redis configured (B8)
    l2_codecs: dict[str, FlightServer]  # diagnostic: L1 off, entries in each of the other codecs (B10)
    redis_prefix: str

    def all(self) -> list[FlightServer]:
        return [self.l1, self.l2, self.l1_no_redis, *self.l2_codecs.values()]


@dataclass
class CacheContext:
    rows: int
    plan: CachePlan
    servers: Servers
    redis: redis.Redis
    run_dir: Path
    tables: dict[str, pa.Table] = field(default_factory=dict)  # typical results, for B11


@contextmanager
def server_set(data_dir: Path, run_dir: Path, prefix: str) -> Iterator[Servers]:
    """The servers, each on its own copy of `data_dir`, started together, stopped by their pids."""
    cache = {"FLIGHT_CACHE__MAX_ENTRY_BYTES": str(MAX_ENTRY_BYTES), "FLIGHT_CACHE__WARM_TOP_N": "0"}
    l2 = {
        "FLIGHT_REDIS__URL": REDIS_URL,
        "FLIGHT_REDIS__KEY_PREFIX": prefix,
        "FLIGHT_REDIS__COMPRESSION": DEFAULT_CODEC,
        **cache,
    }
    l1_off = {"FLIGHT_CACHE__L1_MAX_ENTRIES": "0"}
    # The codec servers write their own entries: a prefix of their own (under the run's).
    codec = {
        name: {
            **l2,
            **l1_off,
            "FLIGHT_REDIS__COMPRESSION": name,
            "FLIGHT_REDIS__KEY_PREFIX": f"{prefix}{name}:",
            "FLIGHT_REDIS__SOCKET_TIMEOUT_S": str(DIAGNOSTIC_SOCKET_TIMEOUT_S),
        }
        for name in OTHER_CODECS
    }
    specs: list[tuple[str, str, dict[str, str]]] = [
        ("l1", "L1+L2", l2),
        ("l2", "L2 only", {**l2, **l1_off}),
        ("l1_no_redis", "L1 only, no Redis", cache),
        *((f"l2_{name}", f"L2 only, {name} entries", codec[name]) for name in OTHER_CODECS),
    ]
    started: dict[str, FlightServer] = {}
    try:
        for name, _, env in specs:
            own_dir = data_dir if name == "l1" else data_dir.parent / f"{data_dir.name}.{name}"
            if own_dir != data_dir:
                _copy_db(data_dir, own_dir)
            started[name] = FlightServer(own_dir, run_dir / f"server_{name}.log", env)
        for name, label, _ in specs:
            server = started[name]
            ready = server.wait_ready()
            log(f"flight-server ({label}) ready in {ready:.1f} s at {server.location} (pid {server.pid})")
        yield Servers(
            l1=started["l1"],
            l2=started["l2"],
            l1_no_redis=started["l1_no_redis"],
            l2_codecs={name: started[f"l2_{name}"] for name in OTHER_CODECS},
            redis_prefix=prefix,
        )
    finally:
        for server in reversed(started.values()):
            server.stop()


def delete_keys(client: redis.Redis, prefix: str) -> int:
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += int(client.delete(*batch))
            batch = []
    if batch:
        deleted += int(client.delete(*batch))
    return deleted


def redis_ping_ms(client: redis.Redis, n: int = 200) -> float:
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        client.ping()
        samples.append(time.perf_counter() - began)
    return _ms(median(samples))


# -- B8 ----------------------------------------------------------------------------------


@dataclass
class Block:
    latencies: list[float]
    server_cpu_s: float
    client_cpu_s: float


def _timed_block(client: flight.FlightClient, server: FlightServer, tkt: flight.Ticket, calls: int) -> Block:
    latencies: list[float] = []
    cpu, client_cpu = server.cpu_seconds(), time.process_time()
    for _ in range(calls):
        began = time.perf_counter()
        rows = client.do_get(tkt).read_all().num_rows
        latencies.append(time.perf_counter() - began)
        if rows != 1:
            raise RuntimeError(f"B8: domains.statistics returned {rows} rows, expected 1")
    return Block(latencies, server.cpu_seconds() - cpu, time.process_time() - client_cpu)


def _b8_block(client: flight.FlightClient, server: FlightServer, tkt: flight.Ticket, calls: int, kind: str) -> Block:
    """A timed block, then the server's own counters must show every call as `kind`."""
    before = cache_stats(client)
    block = _timed_block(client, server, tkt, calls)
    after = cache_stats(client)
    counted = after["l1"]["hits"] - before["l1"]["hits"] if kind == "hit" else after["bypass"] - before["bypass"]
    if counted != calls:
        raise RuntimeError(f"B8 {kind}: the server counted {counted} of {calls} calls as {kind}")
    return block


def run_b8(ctx: CacheContext) -> list[Result]:
    plan = ctx.plan
    server, bare = ctx.servers.l1, ctx.servers.l1_no_redis
    hit, bypass = ticket(B8_COMMAND), ticket(B8_COMMAND, "bypass")
    client, bare_client = flight.connect(server.location), flight.connect(bare.location)
    arms: dict[str, list[Block]] = {"hit": [], "bypass": [], "hit_no_redis": []}
    try:
        for c, s in ((client, server), (bare_client, bare)):
            fetch(c, hit)  # first call: a miss that stores the result
            _, status = fetch(c, hit)
            expect(status, "hit-l1", "B8 warm-up")
            _timed_block(c, s, hit, 20)
        _timed_block(client, server, bypass, 3)
        order: list[tuple[str, flight.FlightClient, FlightServer, flight.Ticket, int, str]] = [
            ("hit", client, server, hit, plan.b8_hits, "hit"),
            ("bypass", client, server, bypass, plan.b8_bypass, "bypass"),
            ("hit_no_redis", bare_client, bare, hit, plan.b8_hits, "hit"),
        ]
        for rep in range(plan.b8_reps):
            rotated = order[rep % 3 :] + order[: rep % 3]
            for arm, c, s, tkt, calls, kind in rotated:
                arms[arm].append(_b8_block(c, s, tkt, calls, kind))
            log(
                f"B8 rep {rep + 1}/{plan.b8_reps}: L1 hit p50 {_ms(median(arms['hit'][-1].latencies)):.2f} ms "
                f"(no Redis: {_ms(median(arms['hit_no_redis'][-1].latencies)):.2f} ms), "
                f"bypass p50 {_ms(median(arms['bypass'][-1].latencies)):.1f} ms"
            )
        ping_ms = redis_ping_ms(ctx.redis)
    finally:
        client.close()
        bare_client.close()

    def flat(arm: str) -> list[float]:
        return [x for b in arms[arm] for x in b.latencies]

    def cpu_ms(arm: str, which: str) -> float:
        calls = len(flat(arm))
        total = sum(b.server_cpu_s if which == "server" else b.client_cpu_s for b in arms[arm])
        return _ms(total / calls)

    hit_all, bypass_all, bare_all = flat("hit"), flat("bypass"), flat("hit_no_redis")
    p50, p99 = _ms(percentile(hit_all, 50)), _ms(percentile(hit_all, 99))
    base50, bare50 = _ms(percentile(bypass_all, 50)), _ms(percentile(bare_all, 50))
    rep_p50 = [_ms(median(b.latencies)) for b in arms["hit"]]
    rep_base = [_ms(median(b.latencies)) for b in arms["bypass"]]
    rep_bare = [_ms(median(b.latencies)) for b in arms["hit_no_redis"]]
    ratios = [b / h for b, h in zip(rep_base, rep_p50, strict=True)]
    ratio = median(ratios)
    redis_ratios = [h / b for h, b in zip(rep_p50, rep_bare, strict=True)]
    redis_ratio = median(redis_ratios)
    return [
        Result(
            benchmark="B8",
            title="L1 hit round trip, `domains.statistics` (example.com), one DoGet",
            baseline=f"uncached (`bypass`): p50 {base50:.1f} ms",
            candidate=f"L1 hit: p50 {p50:.2f} ms, p99 {p99:.2f} ms",
            ratio=ratio,
            ratio_text=f"{ratio:.0f}x faster",
            target=f"hit p50 <= {B8_TARGET_MS} ms",
            met=p50 <= B8_TARGET_MS,
            repetitions=plan.b8_reps,
            details={
                "hit_calls": len(hit_all),
                "bypass_calls": len(bypass_all),
                "hit_p50_ms_per_rep": rep_p50,
                "bypass_p50_ms_per_rep": rep_base,
                "hit_p90_ms": _ms(percentile(hit_all, 90)),
                "hit_p99_ms": p99,
                "bypass_p99_ms": _ms(percentile(bypass_all, 99)),
                "ratios_per_rep": ratios,
                "server_cpu_ms_per_hit": cpu_ms("hit", "server"),
                "client_cpu_ms_per_hit": cpu_ms("hit", "client"),
                "server_cpu_ms_per_bypass": cpu_ms("bypass", "server"),
                "redis_ping_p50_ms": ping_ms,
                "notes": "sequential DoGet + read_all from one FlightClient in the harness process; blocks of "
                f"{plan.b8_hits} hits and {plan.b8_bypass} uncached calls per repetition (and the diagnostic "
                "arm below), order rotating; the server's cache.stats confirm every hit was an L1 hit and every "
                "baseline call a bypass. The server has Redis configured (as in production), so even an L1 hit "
                "reads the data versions (one HMGET) and counts the use (one ZINCRBY) in Redis. "
                "ratio = uncached p50 / hit p50, median of the per-repetition ratios.",
            },
        ),
        Result(
            benchmark="B8",
            title="diagnostic: L1 hit with Redis configured vs an L1-only server (no Redis)",
            baseline=f"L1 hit, no Redis: p50 {bare50:.2f} ms",
            candidate=f"L1 hit, Redis configured: p50 {p50:.2f} ms",
            ratio=redis_ratio,
            ratio_text=f"{redis_ratio:.2f}x the time (+{p50 - bare50:.2f} ms)",
            target="—",
            met=None,
            repetitions=plan.b8_reps,
            details={
                "no_redis_p50_ms_per_rep": rep_bare,
                "no_redis_p99_ms": _ms(percentile(bare_all, 99)),
                "server_cpu_ms_per_hit_no_redis": cpu_ms("hit_no_redis", "server"),
                "client_cpu_ms_per_hit_no_redis": cpu_ms("hit_no_redis", "client"),
                "notes": "a third server, same data and settings but no FLIGHT_REDIS__URL, measured in the same "
                "rotation: the difference is what the two Redis round trips of every named-query request "
                "(versions HMGET, usage ZINCRBY) cost an L1 hit.",
            },
        ),
    ]


# -- B9 ----------------------------------------------------------------------------------


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
    return {"value_bytes": len(value), "get_ms": _ms(median(gets)), "decode_ms": _ms(median(decodes))}


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
                + ", ".join(f"{r.name} {_ms(r.miss_s[-1]):.0f}/{_ms(r.hit_s[-1]):.1f} ms" for r in runs)
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
        miss_ms, hit_ms = _ms(median(run.miss_s)), _ms(median(run.hit_s))
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
                    "miss_ms": [_ms(x) for x in run.miss_s],
                    "hit_ms": [_ms(x) for x in run.hit_s],
                    "ratios": run.ratios,
                    "in_process_l2_hit": breakdown[run.name],
                },
            )
        )
    geo = _geomean(list(per_query.values()))
    all_met = all(r >= B9_TARGET for r in per_query.values())
    results.append(
        Result(
            benchmark="B9",
            title=f"L2 hit vs miss, geometric mean over {len(runs)} named queries",
            baseline=f"miss: geomean {_geomean([_ms(median(r.miss_s)) for r in runs]):.1f} ms",
            candidate=f"L2 hit: geomean {_geomean([_ms(median(r.hit_s)) for r in runs]):.2f} ms",
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


# -- B10 ---------------------------------------------------------------------------------


@dataclass
class B10Arm:
    name: str
    client: flight.FlightClient
    server: FlightServer
    status: str
    seconds: list[float | None] = field(default_factory=list)  # per repetition; None: not a hit
    server_cpu_s: list[float] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)  # statuses of calls that were not hits

    @property
    def hit_seconds(self) -> list[float]:
        return [t for t in self.seconds if t is not None]

    def rates(self, nbytes: int) -> list[float]:
        return [nbytes / MIB / t for t in self.hit_seconds]

    def ratios_to(self, other: B10Arm) -> list[float]:
        """Throughput ratio per repetition, where both calls were hits."""
        return [a / b for a, b in zip(self.seconds, other.seconds, strict=True) if a is not None and b is not None]


def _l2_hit_parts(client: redis.Redis, key: str, table: pa.Table) -> tuple[int, dict[str, float]]:
    """The work an L2 hit adds before streaming, part by part, in this process."""
    value = encode_table(table, DEFAULT_CODEC)
    client.set(key, value)
    parts: dict[str, list[float]] = {"get": [], "crc32": [], "decode_table": []}
    try:
        for _ in range(5):
            began = time.perf_counter()
            got = client.get(key)
            parts["get"].append(time.perf_counter() - began)
            assert isinstance(got, bytes)
            began = time.perf_counter()
            zlib.crc32(memoryview(got)[_HEADER.size :])
            parts["crc32"].append(time.perf_counter() - began)
            began = time.perf_counter()
            decode_table(got)
            parts["decode_table"].append(time.perf_counter() - began)
            del got
    finally:
        client.delete(key)
    return len(value), {f"{k}_ms": _ms(median(v)) for k, v in parts.items()}


def run_b10(ctx: CacheContext) -> list[Result]:
    plan, servers = ctx.plan, ctx.servers
    arms = [
        B10Arm("l2", flight.connect(servers.l2.location), servers.l2, "hit-l2"),
        B10Arm("l1", flight.connect(servers.l1.location), servers.l1, "hit-l1"),
        *(
            B10Arm(f"l2_{name}", flight.connect(server.location), server, "hit-l2")
            for name, server in servers.l2_codecs.items()
        ),
    ]
    l2, l1, *others = arms
    try:
        probe_rows = min(100_000, ctx.rows)
        probe, _ = fetch(l1.client, ticket({"sql": f"SELECT * FROM cdx_records LIMIT {probe_rows}"}, "bypass"))
        limit = min(ctx.rows, round(B10_TARGET_BYTES / (probe.nbytes / probe.num_rows)))
        del probe
        command = {"sql": f"SELECT * FROM cdx_records LIMIT {limit}"}
        use = ticket(command, "use")
        table = pa.table({})
        for arm in (l2, *others):  # each codec server stores its own entry
            for attempt in range(1, B10_STORE_ATTEMPTS + 1):
                before = cache_stats(arm.client)
                table, status = fetch(arm.client, ticket(command, "refresh"))
                expect(status, "miss", f"B10 {arm.name} store")
                if cache_stats(arm.client)["stores"] != before["stores"] + 1:
                    raise RuntimeError("B10: the ~50 MB result was not stored (too large for an entry?)")
                _, status = fetch(arm.client, use)
                if status == "hit-l2":
                    break
                log(f"B10 {arm.name}: stored, then {status} (attempt {attempt}); a Redis call failed?")
            else:
                raise RuntimeError(f"B10 {arm.name}: no L2 hit after {B10_STORE_ATTEMPTS} stores")
        nbytes, rows = table.nbytes, table.num_rows
        fetch(l1.client, use)  # the default codec's entry is shared: an L2 hit there, which fills its L1
        _, status = fetch(l1.client, use)
        expect(status, "hit-l1", "B10 l1 warm-up")
        for rep in range(plan.b10_reps):
            for arm in arms[rep % len(arms) :] + arms[: rep % len(arms)]:
                cpu = arm.server.cpu_seconds()
                began = time.perf_counter()
                got, status = fetch(arm.client, use)
                elapsed = time.perf_counter() - began
                arm.server_cpu_s.append(arm.server.cpu_seconds() - cpu)
                if got.num_rows != rows:
                    raise RuntimeError(f"B10 {arm.name}: {got.num_rows} rows, expected {rows}")
                del got
                arm.seconds.append(elapsed if status == arm.status else None)
                if status != arm.status:  # a Redis timeout answers from the engine: keep count
                    arm.fallbacks.append(status)
            log(
                f"B10 rep {rep + 1}/{plan.b10_reps}: "
                + ", ".join(
                    f"{arm.name} " + (f"{nbytes / MIB / t:.0f} MiB/s" if (t := arm.seconds[-1]) else "not a hit")
                    for arm in arms
                )
            )
        if not l1.hit_seconds or not l2.hit_seconds:
            raise RuntimeError(f"B10: no hits to compare (L1 {l1.fallbacks}, L2 {l2.fallbacks})")
        value_bytes, parts = _l2_hit_parts(ctx.redis, f"{servers.redis_prefix}bench:b10", table)
    finally:
        for arm in arms:
            arm.client.close()

    def ratios(arm: B10Arm) -> list[float]:
        return l1.ratios_to(arm)

    def rate(arm: B10Arm) -> str:
        if not arm.hit_seconds:
            return f"no hits ({len(arm.fallbacks)} calls answered as {sorted(set(arm.fallbacks))})"
        out = f"{median(arm.rates(nbytes)):.0f} MiB/s ({_ms(median(arm.hit_seconds)):.0f} ms)"
        if arm.fallbacks:
            out += f"; {len(arm.fallbacks)} of {len(arm.seconds)} calls not hits ({', '.join(arm.fallbacks)})"
        return out

    ratio = median(ratios(l2))
    what = f"~50 MB result (`SELECT * FROM cdx_records LIMIT {limit:,}`, {nbytes / MIB:.1f} MiB Arrow)"
    results = [
        Result(
            benchmark="B10",
            title=f"{what}: L2 hit vs L1 hit",
            baseline=f"L1 hit: {rate(l1)}",
            candidate=f"L2 hit ({DEFAULT_CODEC}): {rate(l2)}",
            ratio=ratio,
            ratio_text=f"{ratio:.2f}x",
            target=f">= {B10_TARGET}x",
            met=ratio >= B10_TARGET,
            repetitions=plan.b10_reps,
            details={
                "rows": rows,
                "arrow_bytes": nbytes,
                f"l2_value_bytes_{DEFAULT_CODEC}": value_bytes,
                "l2_hit_ms": [None if t is None else _ms(t) for t in l2.seconds],
                "l1_hit_ms": [None if t is None else _ms(t) for t in l1.seconds],
                "ratios": ratios(l2),
                "server_cpu_ms_l2_hit": _ms(median(l2.server_cpu_s)),
                "server_cpu_ms_l1_hit": _ms(median(l1.server_cpu_s)),
                "in_process_l2_hit_parts": parts,
                "notes": "servers over copies of the same data, one Redis: the L2 side has L1 off, the L1 side "
                f"serves the table from memory (both read the same {DEFAULT_CODEC} entry, the default codec); "
                f"FLIGHT_CACHE__MAX_ENTRY_BYTES={MAX_ENTRY_BYTES}. Each call is a DoGet read whole into a pyarrow "
                "table in the harness process; the arms (these two and the codec ones below) rotate who goes "
                "first; throughput = Arrow bytes / wall time (MiB = 2^20 bytes); ratio = L2 MiB/s / L1 MiB/s "
                "per repetition, median. in_process_l2_hit_parts, timed in the harness process on the same "
                f"{DEFAULT_CODEC} value: the Redis GET (redis-py with hiredis, as the server), the CRC32 alone, and "
                "decode_table (CRC32 + IPC read with decompression): the work an L2 hit adds before streaming.",
            },
        )
    ]
    for arm, codec in zip(others, OTHER_CODECS, strict=True):
        r = ratios(arm)
        if not r:
            r = [float("nan")]
        results.append(
            Result(
                benchmark="B10",
                title=f"diagnostic: the same L2 hit with FLIGHT_REDIS__COMPRESSION={codec}, vs L1 hit",
                baseline=f"L1 hit: {rate(l1)}",
                candidate=f"L2 hit ({codec}): {rate(arm)}",
                ratio=median(r),
                ratio_text=f"{median(r):.2f}x",
                target="—",
                met=None,
                repetitions=plan.b10_reps,
                details={
                    "l2_hit_ms": [None if t is None else _ms(t) for t in arm.seconds],
                    "ratios": r,
                    "server_cpu_ms_l2_hit": _ms(median(arm.server_cpu_s)),
                    "notes": f"a server like the L2 side but writing {codec} entries (under a key prefix of its "
                    f"own) and with FLIGHT_REDIS__SOCKET_TIMEOUT_S={DIAGNOSTIC_SOCKET_TIMEOUT_S} (the default 0.25 s "
                    "can time out reading a large uncompressed value), measured in the same rotation.",
                },
            )
        )
    return results


# -- B11 ---------------------------------------------------------------------------------


@dataclass
class CodecRuns:
    value_bytes: int = 0
    ipc_write_s: list[float] = field(default_factory=list)  # the IPC stream alone, no header or copies
    encode_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    set_s: list[float] = field(default_factory=list)
    get_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        enc, dec = _ms(median(self.encode_s)), _ms(median(self.decode_s))
        put, get = _ms(median(self.set_s)), _ms(median(self.get_s))
        return {
            "bytes": self.value_bytes,
            "ipc_write_ms": _ms(median(self.ipc_write_s)),
            "encode_ms": enc,
            "decode_ms": dec,
            "encode_decode_ms": enc + dec,
            "set_ms": put,
            "get_ms": get,
            "set_get_ms": put + get,
            "store_path_ms": enc + put,
            "hit_path_ms": get + dec,
            "total_ms": enc + dec + put + get,
        }


def _timed_ipc_write(table: pa.Table, codec: str) -> float:
    began = time.perf_counter()
    _ipc_write(table, codec)
    return time.perf_counter() - began


def _ipc_write(table: pa.Table, codec: str) -> pa.Buffer:
    """What encode_table does before its header, CRC32 and copies into bytes."""
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=None if codec == "none" else codec)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue()


def b11_tables(ctx: CacheContext) -> dict[str, pa.Table]:
    client = flight.connect(ctx.servers.l1.location)
    try:
        aggregate, _ = fetch(client, ticket(B11_AGGREGATE))
        cdx, _ = fetch(client, ticket({"sql": f"SELECT * FROM cdx_records LIMIT {B11_CDX_ROWS}"}, "bypass"))
        content, _ = fetch(
            client, ticket({"sql": f"SELECT * FROM content_analytics LIMIT {B11_CONTENT_ROWS}"}, "bypass")
        )
    finally:
        client.close()
    return {
        "named-query aggregate (domains.timeline example.com, month)": aggregate,
        f"cdx_records slice ({cdx.num_rows:,} rows)": cdx,
        f"content_analytics rows ({content.num_rows:,})": content,
    }


def run_b11(ctx: CacheContext) -> list[Result]:
    plan = ctx.plan
    tables = b11_tables(ctx)
    key = f"{ctx.servers.redis_prefix}bench:b11"
    runs = {name: {codec: CodecRuns() for codec in COMPRESSIONS} for name in tables}
    try:
        inner: dict[str, int] = {}
        for name, table in tables.items():  # warm-up, and check each codec round-trips
            for codec in COMPRESSIONS:
                began = time.perf_counter()
                value = encode_table(table, codec)
                ok = decode_table(value).equals(table)
                ctx.redis.set(key, value)
                ctx.redis.get(key)
                if not ok:
                    raise RuntimeError(f"B11: {codec} does not round-trip {name}")
                # Small values: several samples per repetition, so that each is not one timer tick.
                inner[name] = max(1, min(B11_MAX_INNER, int(B11_SAMPLE_S / (time.perf_counter() - began))))
        for rep in range(plan.b11_reps):
            for name, table in tables.items():
                order = COMPRESSIONS[rep % 3 :] + COMPRESSIONS[: rep % 3]
                for codec in order:
                    run = runs[name][codec]
                    for i in range(inner[name]):
                        # The IPC write alone, before or after the full encode by turns: whichever
                        # runs first after the previous value was freed pays for fresh pages.
                        ipc_first = (rep + i) % 2 == 0
                        if ipc_first:
                            run.ipc_write_s.append(_timed_ipc_write(table, codec))
                        began = time.perf_counter()
                        value = encode_table(table, codec)
                        run.encode_s.append(time.perf_counter() - began)
                        if not ipc_first:
                            run.ipc_write_s.append(_timed_ipc_write(table, codec))
                        run.value_bytes = len(value)
                        began = time.perf_counter()
                        decode_table(value)
                        run.decode_s.append(time.perf_counter() - began)
                        began = time.perf_counter()
                        ctx.redis.set(key, value)
                        run.set_s.append(time.perf_counter() - began)
                        del value
                        began = time.perf_counter()
                        got = ctx.redis.get(key)
                        run.get_s.append(time.perf_counter() - began)
                        ctx.redis.delete(key)
                        del got
            log(f"B11 rep {rep + 1}/{plan.b11_reps} done")
    finally:
        ctx.redis.delete(key)

    summaries = {name: {codec: runs[name][codec].summary() for codec in COMPRESSIONS} for name in tables}
    results: list[Result] = []

    def describe(s: dict[str, float]) -> str:
        return (
            f"{s['bytes'] / MIB:.2f} MiB, enc {s['encode_ms']:.1f} + dec {s['decode_ms']:.1f} ms, "
            f"SET+GET {s['set_get_ms']:.1f} ms"
            if s["bytes"] >= 100_000
            else f"{s['bytes'] / 1024:.1f} KiB, enc {s['encode_ms']:.2f} + dec {s['decode_ms']:.2f} ms, "
            f"SET+GET {s['set_get_ms']:.2f} ms"
        )

    for name, table in tables.items():
        none = summaries[name]["none"]
        for codec in ("lz4", "zstd"):
            s = summaries[name][codec]
            size = s["bytes"] / none["bytes"]
            rtt = s["total_ms"] / none["total_ms"]
            results.append(
                Result(
                    benchmark="B11",
                    title=f"IPC {codec} vs none: {name}, {table.nbytes / MIB:.2f} MiB Arrow",
                    baseline=f"none: {describe(none)}",
                    candidate=f"{codec}: {describe(s)}",
                    ratio=size,
                    ratio_text=f"bytes {size:.2f}x, enc+dec+SET+GET {rtt:.2f}x",
                    target="report",
                    met=None,
                    repetitions=plan.b11_reps,
                    details={"none": none, codec: s},
                )
            )

    # The recommendation: the hit path (GET + decode) runs on every L2 hit; the store path
    # (encode + SET) once per miss, next to the query itself. Bytes are Redis memory. Times
    # are summed over the results (absolute milliseconds: where the codec makes a difference).
    def total(metric: str, codec: str) -> float:
        return sum(summaries[n][codec][metric] for n in tables)

    hit = {c: total("hit_path_ms", c) for c in COMPRESSIONS}
    store = {c: total("store_path_ms", c) for c in COMPRESSIONS}
    volume = {c: total("bytes", c) for c in COMPRESSIONS}
    fastest = min(hit.values())
    contenders = [c for c in COMPRESSIONS if hit[c] <= fastest * B11_NEAR_FASTEST]
    choice = min(contenders, key=lambda c: volume[c])
    default = DEFAULT_CODEC
    verdict = "keep the default" if choice == default else f"change the default from {default}"

    def sums(c: str) -> str:
        return (
            f"{c}: {volume[c] / MIB:.1f} MiB, hit path {hit[c]:.0f} ms, store path {store[c]:.0f} ms "
            f"({volume[c] / volume['none']:.2f}x / {hit[c] / hit['none']:.2f}x / {store[c] / store['none']:.2f}x none)"
        )

    results.append(
        Result(
            benchmark="B11",
            title="recommended L2 codec (sums over the three results)",
            baseline=sums("none").split(" (", 1)[0],
            candidate="; ".join(sums(c) for c in ("lz4", "zstd")),
            ratio=hit[choice] / hit["none"],
            ratio_text=f"**{choice}** ({verdict})",
            target="recommend one",
            met=None,
            repetitions=plan.b11_reps,
            details={
                "choice": choice,
                "hit_path_ms_sum": hit,
                "store_path_ms_sum": store,
                "value_bytes_sum": volume,
                "hit_path_vs_none_geomean": {
                    c: _geomean([summaries[n][c]["hit_path_ms"] / summaries[n]["none"]["hit_path_ms"] for n in tables])
                    for c in COMPRESSIONS
                },
                "bytes_vs_none_geomean": {
                    c: _geomean([summaries[n][c]["bytes"] / summaries[n]["none"]["bytes"] for n in tables])
                    for c in COMPRESSIONS
                },
                "samples_per_repetition": inner,
                "summaries": summaries,
                "zstd_level": pa.Codec.default_compression_level("zstd"),
                "notes": "in process, on tables fetched from the server: encode_table (IPC stream with buffer "
                "compression, header + CRC32, copied to bytes) and decode_table (CRC32, IPC read, "
                "decompression); SET and GET of the value with redis-py (hiredis) on loopback; codec order "
                "rotating per repetition, small values sampled several times per repetition; medians. "
                "ipc_write_ms: the IPC stream alone (what encode_table does before its CRC32 and copies into "
                "bytes), timed before or after encode_table by turns. "
                "hit path = GET + decode (every L2 hit), store path = encode + SET (every stored miss). Rule: "
                f"among codecs whose summed hit path is within {B11_NEAR_FASTEST - 1:.0%} of the fastest, the "
                "one with the fewest bytes (Redis memory, network).",
            },
        )
    )
    return results


# -- results -----------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rounded(value: Any) -> Any:
    """Floats to 4 significant digits, through lists and dicts."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(_rounded(value), default=str)


def _codec_table(results: Sequence[Result]) -> list[str]:
    rec = next((r for r in results if r.benchmark == "B11" and r.details.get("summaries")), None)
    if rec is None:
        return []
    lines = [
        "## B11 codecs in detail",
        "",
        "| result | codec | value | encode ms (IPC write alone) | decode ms | SET ms | GET ms "
        "| hit path (GET+decode) ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, codecs in rec.details["summaries"].items():
        for codec, s in codecs.items():
            lines.append(
                f"| {_cell(name)} | {codec} | {s['bytes'] / MIB:.3f} MiB | {s['encode_ms']:.2f} "
                f"({s['ipc_write_ms']:.2f}) | {s['decode_ms']:.2f} | {s['set_ms']:.2f} | {s['get_ms']:.2f} | "
                f"{s['hit_path_ms']:.2f} |"
            )
    return [*lines, ""]


def render_markdown(results: Sequence[Result], meta: Mapping[str, Any]) -> str:
    machine = meta.get("machine", {})
    lines = [
        "# Chrono Flight result-cache benchmarks",
        "",
        f"Run {meta.get('started', '')}, {meta.get('rows', 0):,} demo CDX rows, "
        f"mode {'quick' if meta.get('quick') else 'full'}, total {meta.get('duration_s', 0):.0f} s "
        f"(`{meta.get('command', '')}`). Machine: {machine.get('logical_cores')} logical cores "
        f"({machine.get('cpu_model', '?')}), {machine.get('memory_gb')} GB RAM, load average at start "
        f"{machine.get('load_avg_at_start')}, at end {meta.get('load_avg_at_end')}. "
        "Servers: `flight-server serve` processes, L1+L2 and L2 only (FLIGHT_CACHE__L1_MAX_ENTRIES=0), plus "
        f"diagnostic ones (L1 without Redis; L2 only with {' and '.join(OTHER_CODECS)} entries); Redis on "
        f"loopback, {DEFAULT_CODEC} entries (the server's default codec) unless said otherwise. Baseline and "
        "candidate run side by side, interleaved; figures are medians over the repetitions, ratios medians of "
        "the per-repetition ratios.",
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
    lines += ["", *_codec_table(results), "## Details", ""]
    for r in results:
        notes = r.details.get("notes")
        lines.append(
            f"- **{r.benchmark}** {r.title} ({r.repetitions} reps): " + (notes if isinstance(notes, str) else "")
        )
        for key, value in r.details.items():
            if key not in ("notes", "summaries"):
                lines.append(f"  - {key}: {_compact(value)}")
    lines.append("")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------

GROUPS = ("B8", "B9", "B10", "B11")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cache", description="Chrono Flight result-cache benchmarks")
    parser.add_argument("--rows", type=int, help="demo CDX rows (default 10,000,000; 1,000,000 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1M rows, fewer repetitions")
    parser.add_argument("--only", help="comma-separated subset of B8,B9,B10,B11")
    parser.add_argument("--data-dir", type=Path, help="data directory (default: under the temp directory)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where cache.json/cache.md go")
    args = parser.parse_args(argv)
    only = {s.strip().upper() for s in args.only.split(",")} if args.only else set(GROUPS)
    if only - set(GROUPS):
        parser.error(f"unknown benchmark(s) {', '.join(sorted(only - set(GROUPS)))}; choose from {', '.join(GROUPS)}")
    args.only = only
    if args.rows is None:
        args.rows = 1_000_000 if args.quick else 10_000_000
    return args


def _failed(name: str, exc: BaseException) -> Result:
    message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return Result(name, "failed", "—", "—", None, "—", "—", False, 0, {"notes": message})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    started_at = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    machine = machine_info()
    plan = CachePlan.for_mode(args.quick)
    data_dir: Path = args.data_dir or BENCH_ROOT / f"cache-data-{args.rows}"
    run_dir = BENCH_ROOT / f"cache-run-{dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    prefix = f"bench-cache-{os.getpid()}-{int(time.time())}:"
    log(f"{machine['logical_cores']} cores, {args.rows:,} rows, {'quick' if args.quick else 'full'} run")

    if args.data_dir is None:
        seed_from_shared(data_dir, args.rows)
    data = prepare_data(data_dir, args.rows)
    data_ready_s = time.perf_counter() - started
    rclient = redis.Redis.from_url(REDIS_URL)
    rclient.ping()
    results: list[Result] = []
    timings: dict[str, float] = {}
    try:
        with server_set(data.data_dir, run_dir, prefix) as servers:
            ctx = CacheContext(args.rows, plan, servers, rclient, run_dir)
            steps: list[tuple[str, Callable[[CacheContext], list[Result]]]] = [
                ("B8", run_b8),
                ("B9", run_b9),
                ("B10", run_b10),
                ("B11", run_b11),
            ]
            for name, step in steps:
                if name not in args.only:
                    continue
                step_started = time.perf_counter()
                try:
                    results += step(ctx)
                except Exception as exc:
                    traceback.print_exc()
                    results.append(_failed(name, exc))
                timings[name] = round(time.perf_counter() - step_started, 1)
                log(f"{name} took {timings[name]:.0f} s")
                for server in servers.all():
                    server.check_alive()
    finally:
        deleted = delete_keys(rclient, prefix)
        rclient.close()
        log(f"deleted {deleted} Redis keys under {prefix}")

    command = "python -m bench.cache" + (
        f" --rows {args.rows}" if args.rows != (10**6 if args.quick else 10**7) else ""
    )
    meta = {
        "started": started_at,
        "command": command + (" --quick" if args.quick else ""),
        "rows": args.rows,
        "quick": args.quick,
        "only": sorted(args.only),
        "duration_s": round(time.perf_counter() - started, 1),
        "data_ready_s": round(data_ready_s, 1),
        "data_generation_s": data.generated_s,
        "step_seconds": timings,
        "data_dir": str(data.data_dir),
        "server_command": server_command(),
        "redis_url": REDIS_URL,
        "redis_key_prefix": prefix,
        "l2_default_codec": DEFAULT_CODEC,
        "plan": vars(plan),
        "machine": machine,
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "run_dir": str(run_dir),
    }
    markdown = common.write_results(results, meta, args.out_dir, name="cache", render=render_markdown)
    print(markdown)
    log(f"wrote cache.json and cache.md to {args.out_dir}; {meta['duration_s']:.0f} s in total")
    return 1 if any(r.title == "failed" for r in results) else 0  # a missed target is a result


if __name__ == "__main__":
    sys.exit(main())
