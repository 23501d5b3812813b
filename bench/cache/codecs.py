"""B11: IPC encoding of typical results with none, LZ4 and ZSTD, and their Redis round trips."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from flight_server.cache.redis_store import COMPRESSIONS, decode_table, encode_table

from bench.cache.harness import DEFAULT_CODEC, MIB, CacheContext, fetch, ticket, to_ms
from bench.common import Result, geomean, log, median

B11_AGGREGATE: dict[str, Any] = {"query": "domains.timeline", "params": {"domain": "example.com", "interval": "month"}}
B11_CDX_ROWS = 1_000_000
B11_CONTENT_ROWS = 500_000
B11_NEAR_FASTEST = 1.15  # codecs within 15% of the fastest hit path compete on bytes
B11_SAMPLE_S = 0.05  # small values are measured several times per repetition, up to ~this long
B11_MAX_INNER = 100


@dataclass
class CodecRuns:
    value_bytes: int = 0
    ipc_write_s: list[float] = field(default_factory=list)  # the IPC stream alone, no header or copies
    encode_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    set_s: list[float] = field(default_factory=list)
    get_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        enc, dec = to_ms(median(self.encode_s)), to_ms(median(self.decode_s))
        put, get = to_ms(median(self.set_s)), to_ms(median(self.get_s))
        return {
            "bytes": self.value_bytes,
            "ipc_write_ms": to_ms(median(self.ipc_write_s)),
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
                    c: geomean([summaries[n][c]["hit_path_ms"] / summaries[n]["none"]["hit_path_ms"] for n in tables])
                    for c in COMPRESSIONS
                },
                "bytes_vs_none_geomean": {
                    c: geomean([summaries[n][c]["bytes"] / summaries[n]["none"]["bytes"] for n in tables])
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
