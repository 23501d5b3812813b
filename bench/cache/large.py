"""B10: L2 hit of a ~50 MB result vs the same result from L1; the other codecs as diagnostics."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.flight as flight
import redis

from flight_server.cache.redis_store import _HEADER, decode_table, encode_table

from bench.cache.harness import (
    DEFAULT_CODEC,
    DIAGNOSTIC_SOCKET_TIMEOUT_S,
    MAX_ENTRY_BYTES,
    MIB,
    OTHER_CODECS,
    CacheContext,
    cache_stats,
    expect,
    fetch,
    ticket,
    to_ms,
)
from bench.common import FlightServer, Result, log, median

B10_TARGET_BYTES = 50_000_000
B10_TARGET = 0.5
B10_STORE_ATTEMPTS = 3


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
    return len(value), {f"{k}to_ms": to_ms(median(v)) for k, v in parts.items()}


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
        out = f"{median(arm.rates(nbytes)):.0f} MiB/s ({to_ms(median(arm.hit_seconds)):.0f} ms)"
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
                "l2_hit_ms": [None if t is None else to_ms(t) for t in l2.seconds],
                "l1_hit_ms": [None if t is None else to_ms(t) for t in l1.seconds],
                "ratios": ratios(l2),
                "server_cpu_ms_l2_hit": to_ms(median(l2.server_cpu_s)),
                "server_cpu_ms_l1_hit": to_ms(median(l1.server_cpu_s)),
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
                    "l2_hit_ms": [None if t is None else to_ms(t) for t in arm.seconds],
                    "ratios": r,
                    "server_cpu_ms_l2_hit": to_ms(median(arm.server_cpu_s)),
                    "notes": f"a server like the L2 side but writing {codec} entries (under a key prefix of its "
                    f"own) and with FLIGHT_REDIS__SOCKET_TIMEOUT_S={DIAGNOSTIC_SOCKET_TIMEOUT_S} (the default 0.25 s "
                    "can time out reading a large uncompressed value), measured in the same rotation.",
                },
            )
        )
    return results
