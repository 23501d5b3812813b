"""Redis faults never reach the client: down, paused, full, corrupt entries.

Each test runs its own redis-server on a free port and stops, pauses (SIGSTOP) or
fills it; queries keep being answered from the engine and caching resumes by itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest
import redis

from flight_server.settings import CacheSettings, RedisSettings

from support.servers import ServerHandle, start_server, stop_server
from support.waiting import wait_for

pytestmark = pytest.mark.redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisProcess:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(answers, 30, "redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    instance = RedisProcess(_free_port())
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def cached_server(tmp_path: Path, private_redis: RedisProcess) -> Iterator[ServerHandle]:
    handle = start_server(
        tmp_path / "data",
        rows=20_000,
        cache=CacheSettings(warm_top_n=0, l1_max_entries=0),  # L2 only: every lookup reaches Redis
        redis=RedisSettings(url=private_redis.url, socket_timeout_s=0.2, breaker_failures=2, breaker_open_s=0.5),
    )
    yield handle
    stop_server(handle)


def _status(handle: ServerHandle, command: dict[str, Any]) -> tuple[int, str, float]:
    started = time.monotonic()
    reader = handle.client.do_get(flight.Ticket(json.dumps(command).encode()))
    first = reader.read_chunk()
    rows = first.data.num_rows + reader.read_all().num_rows
    return rows, json.loads(first.app_metadata.to_pybytes())["cache"], time.monotonic() - started


TOP = {"query": "domains.top", "params": {"limit": 5}}


def _wait_for(handle: ServerHandle, expected: str, command: dict[str, Any] = TOP) -> str:
    wait_for(lambda: _status(handle, command)[1] == expected, 30, f"the cache status never became {expected}")
    return expected


def test_cache_faults_redis_down_then_back(cached_server: ServerHandle, private_redis: RedisProcess) -> None:
    assert _status(cached_server, TOP)[:2] == (5, "miss")
    assert _status(cached_server, TOP)[:2] == (5, "hit-l2")
    private_redis.stop()
    for _ in range(5):
        rows, status, _ = _status(cached_server, TOP)
        assert (rows, status) == (5, "miss")
    stats = cached_server.action("cache.stats")
    assert stats["l2"]["breaker"]["state"] in ("open", "half-open")
    assert any("redis" in w for w in cached_server.action("health")["warnings"])
    private_redis.start()  # empty again: the entry is gone, caching resumes by itself
    assert _wait_for(cached_server, "hit-l2") == "hit-l2"
    assert cached_server.action("cache.stats")["l2"]["breaker"]["state"] == "closed"


def test_cache_faults_redis_paused_costs_at_most_a_timeout(
    cached_server: ServerHandle, private_redis: RedisProcess
) -> None:
    _status(cached_server, TOP)
    private_redis.pause()
    try:
        for _ in range(6):
            rows, status, _ = _status(cached_server, TOP)
            assert (rows, status) == (5, "miss")
        # the first calls wait for the socket timeout; once the breaker is open, none do
        assert cached_server.action("cache.stats")["l2"]["breaker"]["trips"] >= 1
    finally:
        private_redis.resume()
    assert _wait_for(cached_server, "hit-l2") == "hit-l2"


def test_cache_faults_redis_full_answers_from_the_engine(tmp_path: Path) -> None:
    full = RedisProcess(_free_port())
    full.start("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    filler = redis.Redis(port=full.port)
    try:
        try:
            for i in range(10_000):
                filler.set(f"filler:{i}", b"x" * 4096)
        except redis.ResponseError:
            pass  # OOM: Redis is full now
        handle = start_server(
            tmp_path / "data",
            rows=20_000,
            cache=CacheSettings(warm_top_n=0, l1_max_entries=0),
            redis=RedisSettings(url=full.url, socket_timeout_s=0.2, breaker_open_s=0.5),
        )
        try:
            for _ in range(3):
                assert _status(handle, TOP)[:2] == (5, "miss")
            assert handle.action("cache.stats")["l2"]["errors"] >= 1
            filler.flushall()
            assert _wait_for(handle, "hit-l2") == "hit-l2"
        finally:
            stop_server(handle)
    finally:
        full.stop()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_cache_faults_corrupt_entry_is_dropped(
    cached_server: ServerHandle, private_redis: RedisProcess, damage: str
) -> None:
    assert _status(cached_server, TOP)[1] == "miss"
    client = redis.Redis(port=private_redis.port)
    keys = list(client.scan_iter("chrono:result:*"))
    assert len(keys) == 1
    value = client.get(keys[0])
    assert isinstance(value, bytes)
    if damage == "truncate":
        client.set(keys[0], value[: len(value) - 10])
    elif damage == "garbage":
        client.set(keys[0], b"not an arrow stream at all")
    else:
        flipped = bytearray(value)
        flipped[-20] ^= 0xFF
        client.set(keys[0], bytes(flipped))
    rows, status, _ = _status(cached_server, TOP)
    assert (rows, status) == (5, "miss")
    assert cached_server.action("cache.stats")["l2"]["corrupt_entries"] == 1
    assert _status(cached_server, TOP)[1] == "hit-l2"  # stored afresh


# -- Redis restarted empty: data versions never go back ---------------------------------------

COUNT = {"sql": "SELECT count(*) AS n FROM cdx_records"}


def _answer(handle: ServerHandle, command: dict[str, Any]) -> tuple[Any, str]:
    """The first value of the result and the cache status."""
    reader = handle.client.do_get(flight.Ticket(json.dumps(command).encode()))
    first = reader.read_chunk()
    reader.read_all()
    return first.data.column(0)[0].as_py(), json.loads(first.app_metadata.to_pybytes())["cache"]


def _through_redis(handle: ServerHandle, command: dict[str, Any]) -> list[tuple[Any, str]]:
    """Run `command` until a run reaches Redis without a fault; every (value, status) on the way."""
    runs = []

    def clean_run() -> bool:
        before = handle.action("cache.stats")["l2"]
        runs.append(_answer(handle, command))
        after = handle.action("cache.stats")["l2"]
        return all(after[k] == before[k] for k in ("errors", "skipped_while_open"))

    wait_for(clean_run, 30, f"redis never answered again: {runs}")
    return runs


def _put_one_capture(handle: ServerHandle) -> None:
    row = pa.table(
        {
            "id": ["epoch-0"],
            "domain": ["epoch.example"],
            "original_url": ["https://epoch.example/"],
            "unix_timestamp": pa.array([1_714_521_600], pa.int64()),
            "status_code": pa.array([200], pa.int32()),
        }
    )
    writer, acks = handle.client.do_put(flight.FlightDescriptor.for_path("cdx_records"), row.schema)
    writer.write_table(row)
    writer.done_writing()
    assert acks.read() is not None
    writer.close()


def _l1_server(data_dir: Path, redis_url: str, rows: int) -> ServerHandle:
    return start_server(
        data_dir,
        rows=rows,
        cache=CacheSettings(warm_top_n=0),  # L1 on: it holds results of the old versions
        redis=RedisSettings(url=redis_url, socket_timeout_s=0.2, breaker_failures=2, breaker_open_s=0.5),
    )


def test_cache_faults_redis_restarted_empty_never_serves_an_older_version(
    tmp_path: Path, private_redis: RedisProcess
) -> None:
    handle = _l1_server(tmp_path / "data", private_redis.url, 20_000)
    try:
        assert _answer(handle, COUNT) == (20_000, "miss")
        assert _answer(handle, COUNT) == (20_000, "hit-l1")
        _put_one_capture(handle)
        assert _answer(handle, COUNT) == (20_001, "miss")
        private_redis.stop()
        private_redis.start()  # empty: the data-version counters start again from nothing
        runs = _through_redis(handle, COUNT)
        runs += [_answer(handle, COUNT) for _ in range(3)]
        assert {value for value, _ in runs} == {20_001}, runs
        assert runs[-1] == (20_001, "hit-l1")  # caching resumed under the new epoch
    finally:
        stop_server(handle)


def test_cache_faults_servers_sharing_redis_converge_on_its_new_epoch(
    tmp_path: Path, private_redis: RedisProcess
) -> None:
    first = _l1_server(tmp_path / "first", private_redis.url, 0)
    second = _l1_server(tmp_path / "second", private_redis.url, 0)
    command = {"sql": "SELECT 42 AS answer"}
    try:
        assert _answer(first, command) == (42, "miss")
        assert _answer(second, command) == (42, "hit-l2")  # one key for both servers
        assert _answer(second, command) == (42, "hit-l1")
        private_redis.stop()
        private_redis.start()
        assert _through_redis(first, command)[-1] == (42, "miss")  # stored under the new epoch
        # the second server finds the first one's entry, not the one its memory holds from before
        assert _through_redis(second, command)[-1] == (42, "hit-l2")
        assert second.action("cache.stats")["version_epochs"] == 1
    finally:
        stop_server(first)
        stop_server(second)
