"""The tiered result cache against real DuckDB, real Redis and a real Flight server."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flight_server.cache.memory import MemoryCache
from flight_server.cache.redis_store import CorruptEntry, RedisStore, decode_table, encode_table
from flight_server.settings import CacheSettings, RedisSettings

from support.servers import ServerHandle, start_server, stop_server
from support.waiting import wait_for

pytestmark = pytest.mark.redis

REDIS_URL = "redis://127.0.0.1:6379/0"


def _metadata(handle: ServerHandle, command: dict[str, Any]) -> tuple[pa.Table, dict[str, Any]]:
    reader = handle.client.do_get(flight.Ticket(json.dumps(command).encode()))
    first = reader.read_chunk()
    metadata = json.loads(first.app_metadata.to_pybytes())
    rest = reader.read_all()
    return pa.Table.from_batches([first.data, *rest.to_batches()]), metadata


def _unique_sql() -> str:
    # a fresh cache key every time: the alias differs
    return f"SELECT domain, count(*) AS n_{uuid.uuid4().hex[:8]} FROM cdx_records GROUP BY 1 ORDER BY 2 DESC, 1"


# -- L1 on the shared server -------------------------------------------------------------


def test_cache_second_identical_query_is_an_l1_hit(server: ServerHandle) -> None:
    command = {"sql": _unique_sql()}
    first, meta1 = _metadata(server, command)
    second, meta2 = _metadata(server, command)
    assert meta1["cache"] == "miss"
    assert meta2["cache"] == "hit-l1"
    assert first.equals(second)
    info = server.client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(command).encode()))
    assert json.loads(info.app_metadata)["cache"] == "hit-l1"


def test_cache_bypass_and_refresh_are_honoured(server: ServerHandle) -> None:
    sql = _unique_sql()
    assert _metadata(server, {"sql": sql, "cache": "bypass"})[1]["cache"] == "bypass"
    assert _metadata(server, {"sql": sql})[1]["cache"] == "miss"  # bypass stored nothing
    assert _metadata(server, {"sql": sql})[1]["cache"] == "hit-l1"
    stores = server.action("cache.stats")["stores"]
    assert _metadata(server, {"sql": sql, "cache": "refresh"})[1]["cache"] == "miss"
    assert server.action("cache.stats")["stores"] == stores + 1  # refresh re-ran and stored
    assert _metadata(server, {"sql": sql})[1]["cache"] == "hit-l1"


def test_cache_invalidate_by_table_makes_next_read_a_miss(server: ServerHandle) -> None:
    command = {"query": "domains.top", "params": {"limit": 4}}
    _metadata(server, command)
    assert _metadata(server, command)[1]["cache"] == "hit-l1"
    result = server.action("cache.invalidate", {"tables": ["cdx_records"]})
    assert "table:cdx_records" in result["invalidated"]
    assert _metadata(server, command)[1]["cache"] == "miss"


def test_cache_invalidate_by_query_pattern(server: ServerHandle) -> None:
    domains = {"query": "domains.top", "params": {"limit": 5}}
    content = {"query": "content.language_analysis"}
    for command in (domains, content, domains, content):
        _metadata(server, command)
    result = server.action("cache.invalidate", {"queries": "domains.*"})
    assert "route:domains.top" in result["invalidated"]
    assert "route:content.language_analysis" not in result["invalidated"]
    assert _metadata(server, domains)[1]["cache"] == "miss"
    assert _metadata(server, content)[1]["cache"] == "hit-l1"


def test_cache_invalidate_rejects_bad_bodies(server: ServerHandle) -> None:
    with pytest.raises(pa.ArrowInvalid, match=r"cache\.invalidate needs \{\"tables\": \[\.\.\.\]\}"):
        server.action("cache.invalidate", {})
    with pytest.raises(pa.ArrowInvalid, match="'tables' must be a list of table names"):
        server.action("cache.invalidate", {"tables": "cdx_records"})
    with pytest.raises(pa.ArrowKeyError, match="unknown table 'nope'"):
        server.action("cache.invalidate", {"tables": ["nope"]})
    with pytest.raises(pa.ArrowKeyError, match=r"no named query matches 'zzz\.\*'"):
        server.action("cache.invalidate", {"queries": "zzz.*"})


def test_cache_concurrent_identical_misses_run_once(server: ServerHandle) -> None:
    sql = f"SELECT count(*) AS n_{uuid.uuid4().hex[:8]} FROM range(400000000)"
    before = server.action("cache.stats")
    results: list[str] = []

    def run() -> None:
        client = flight.connect(server.location)
        reader = client.do_get(flight.Ticket(json.dumps({"sql": sql}).encode()))
        results.append(json.loads(reader.read_chunk().app_metadata.to_pybytes())["cache"])
        client.close()

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = server.action("cache.stats")
    assert sorted(results).count("miss") == 1
    assert after["stores"] - before["stores"] == 1
    assert after["coalesced"] - before["coalesced"] == 5


def test_cache_stats_count_hits_per_level(server: ServerHandle) -> None:
    before = server.action("cache.stats")
    command = {"sql": _unique_sql()}
    _metadata(server, command)
    _metadata(server, command)
    after = server.action("cache.stats")
    assert after["misses"] - before["misses"] == 1
    assert after["l1"]["hits"] - before["l1"]["hits"] == 1
    assert after["l1"]["entries"] >= 1 and after["l1"]["bytes"] > 0
    assert 0 <= after["hit_ratio"] <= 1


# -- servers of their own ----------------------------------------------------------------


@pytest.fixture
def small_entry_server(tmp_path: Path) -> Iterator[ServerHandle]:
    handle = start_server(tmp_path / "data", rows=20_000, cache=CacheSettings(max_entry_bytes=10_000))
    yield handle
    stop_server(handle)


def test_cache_results_over_the_entry_cap_stream_uncached(small_entry_server: ServerHandle) -> None:
    command = {"sql": "SELECT * FROM cdx_records"}
    table1, meta1 = _metadata(small_entry_server, command)
    table2, meta2 = _metadata(small_entry_server, command)
    assert (meta1["cache"], meta2["cache"]) == ("miss", "miss")
    assert table1.num_rows == table2.num_rows == 20_000
    assert small_entry_server.action("cache.stats")["too_large"] >= 2
    small = {"sql": "SELECT 1 AS one"}
    _metadata(small_entry_server, small)
    assert _metadata(small_entry_server, small)[1]["cache"] == "hit-l1"


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"chrono-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)


def test_cache_l2_is_shared_between_instances(tmp_path: Path, redis_prefix: str) -> None:
    shared = RedisSettings(url=REDIS_URL, key_prefix=redis_prefix)
    no_warming = CacheSettings(warm_top_n=0)  # warming would refill the entry the test expects missing
    first = start_server(tmp_path / "a", rows=20_000, redis=shared, cache=no_warming)
    second = start_server(tmp_path / "b", rows=20_000, redis=shared, cache=no_warming)
    try:
        command = {"query": "domains.top", "params": {"limit": 3}}
        table_a, meta_a = _metadata(first, command)
        table_b, meta_b = _metadata(second, command)
        table_b2, meta_b2 = _metadata(second, command)
        assert (meta_a["cache"], meta_b["cache"], meta_b2["cache"]) == ("miss", "hit-l2", "hit-l1")
        assert table_a.equals(table_b) and table_b.equals(table_b2)
        # a version bump on one instance is seen by the other
        first.action("cache.invalidate", {"tables": ["cdx_records"]})
        assert _metadata(second, command)[1]["cache"] == "miss"
        stats = second.action("cache.stats")
        assert stats["l2"]["hits"] == 1 and stats["l2"]["breaker"]["state"] == "closed"
    finally:
        stop_server(first)
        stop_server(second)


def test_cache_warming_refills_top_queries_after_invalidation(tmp_path: Path) -> None:
    handle = start_server(tmp_path / "data", rows=20_000, cache=CacheSettings(warm_top_n=2))
    try:
        hot = {"query": "domains.top", "params": {"limit": 3}}
        for _ in range(3):
            _metadata(handle, hot)
        handle.action("cache.invalidate", {"tables": ["cdx_records"]})
        wait_for(lambda: handle.action("cache.stats")["warming"]["warmed"] >= 1, 30, "nothing was warmed")
        assert _metadata(handle, hot)[1]["cache"] == "hit-l1"
    finally:
        stop_server(handle)


def test_cache_low_hit_ratio_is_flagged_in_health(tmp_path: Path) -> None:
    handle = start_server(tmp_path / "data", rows=0)
    try:
        for i in range(101):
            handle.get({"sql": f"SELECT {i} AS v"})
        health = handle.action("health")
        assert any("hit ratio" in w for w in health["warnings"])
        assert health["status"] == "degraded"
    finally:
        stop_server(handle)


# -- the parts on their own ---------------------------------------------------------------


def test_cache_memory_lru_evicts_by_entries_and_bytes() -> None:
    table = pa.table({"x": list(range(1000))})
    cache = MemoryCache(max_entries=3, max_bytes=table.nbytes * 10, ttl_s=60)
    for key in "abcd":
        cache.put(key, table, 60)
    assert cache.get("a") is None and cache.get("d") is not None
    assert cache.stats()["evictions"] == 1
    by_bytes = MemoryCache(max_entries=100, max_bytes=table.nbytes * 2, ttl_s=60)
    for key in "abc":
        by_bytes.put(key, table, 60)
    assert by_bytes.stats()["entries"] == 2 and by_bytes.stats()["bytes"] <= table.nbytes * 2
    assert not by_bytes.put("huge", pa.table({"x": list(range(100_000))}), 60)


def test_cache_memory_entries_expire() -> None:
    now = [1000.0]
    cache = MemoryCache(max_entries=10, max_bytes=10**9, ttl_s=60, clock=lambda: now[0])
    cache.put("k", pa.table({"x": [1]}), ttl_s=0.05)
    assert cache.get("k") is not None
    now[0] += 0.1
    assert cache.get("k") is None


def test_cache_encoded_entry_detects_truncation_and_damage() -> None:
    value = encode_table(pa.table({"x": list(range(1000)), "s": ["a"] * 1000}), "lz4")
    assert decode_table(value).num_rows == 1000
    with pytest.raises(CorruptEntry):
        decode_table(value[: len(value) // 2])
    damaged = bytearray(value)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(CorruptEntry):
        decode_table(bytes(damaged))
    with pytest.raises(CorruptEntry):
        decode_table(b"garbage")


_ARROW_TABLES = st.sampled_from(
    [
        pa.table({"i": pa.array([1, None, 3], pa.int64()), "f": pa.array([1.5, None, float("inf")])}),
        pa.table({"s": pa.array(["a", None, "ü" * 50], pa.large_string())}),
        pa.table({"t": pa.array([0, None, 10**15], pa.timestamp("us", tz="Europe/Amsterdam"))}),
        pa.table({"d": pa.array([Decimal("1.23"), None], pa.decimal128(10, 2))}),
        pa.table({"l": pa.array([[1, 2], None, []], pa.list_(pa.int32()))}),
        pa.table({"st": pa.array([{"a": 1, "b": "x"}, None], pa.struct([("a", pa.int8()), ("b", pa.string())]))}),
        pa.table({"dict": pa.array(["a", "b", "a", None]).dictionary_encode()}),
        pa.table({"nested": pa.array([[{"k": [1.0]}], None], pa.list_(pa.struct([("k", pa.list_(pa.float64()))])))}),
        pa.table({"empty": pa.array([], pa.string())}),
        pa.table({"dt": pa.array([0, None], pa.date32()), "b": pa.array([True, None])}),
    ]
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=_ARROW_TABLES, compression=st.sampled_from(["none", "lz4", "zstd"]), rows=st.integers(1, 3))
def test_cache_arrow_types_round_trip_through_redis(
    redis_prefix: str, table: pa.Table, compression: str, rows: int
) -> None:
    store = RedisStore(RedisSettings(url=REDIS_URL, key_prefix=redis_prefix, compression=compression))
    try:
        original = pa.concat_tables([table] * rows)
        key = uuid.uuid4().hex
        assert store.put_table(key, original, 60)
        back = store.get_table(key)
        assert back is not None
        assert back.schema.equals(original.schema, check_metadata=True)
        assert back.equals(original)
    finally:
        store.close()


def test_cache_result_read_before_an_ingest_is_never_served_after_it(tmp_path: Path) -> None:
    from chrono_flight_client import ChronoFlightClient

    handle = start_server(tmp_path / "data", rows=0, cache=CacheSettings(warm_top_n=0))
    try:
        with ChronoFlightClient.connect(handle.location) as client:
            client.ingest("page_events", pa.table({"page": ["a", "b"], "n": [1, 2]}))
            count = {"sql": "SELECT count(*) AS n, sum(n) AS total FROM page_events"}
            before, meta = _metadata(handle, count)
            assert meta["cache"] == "miss" and before.column("n")[0].as_py() == 2
            assert _metadata(handle, count)[1]["cache"] == "hit-l1"
            client.ingest("page_events", pa.table({"page": ["c"], "n": [40]}))
            after, meta = _metadata(handle, count)
            assert meta["cache"] == "miss"
            assert (after.column("n")[0].as_py(), after.column("total")[0].as_py()) == (3, 43)
    finally:
        stop_server(handle)
