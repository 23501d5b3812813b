"""Shared set-up of the result-cache benchmarks: plan, data, servers, Flight and Redis helpers."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import redis

from flight_server.cache.redis_store import COMPRESSIONS
from flight_server.settings import RedisSettings

from bench.common import DB_NAME, FlightServer, _fingerprint, log, median

REDIS_URL = "redis://127.0.0.1:6379/0"
# The server's default L2 codec: what the main servers run with (set explicitly, so the
# results say which); the other codecs run on diagnostic servers in B10.
DEFAULT_CODEC: str = RedisSettings.model_fields["compression"].default
OTHER_CODECS = tuple(c for c in COMPRESSIONS if c != DEFAULT_CODEC)
BENCH_ROOT = Path(tempfile.gettempdir()) / "chrono-flight-bench"
MIB = 1024 * 1024
MAX_ENTRY_BYTES = 128 * MIB  # B10's result must be cacheable
DIAGNOSTIC_SOCKET_TIMEOUT_S = 5.0  # codec servers of B10: a timeout would hide the codec's cost


def to_ms(seconds: float) -> float:
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
    return to_ms(median(samples))
