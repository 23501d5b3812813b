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

import pyarrow.flight as flight
import pytest
import redis

from flight_server.settings import CacheSettings, RedisSettings

from conftest import ServerHandle, start_server, stop_server
from support import wait_for

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
