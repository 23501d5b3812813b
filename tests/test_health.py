"""gRPC health checking with a real grpc.health.v1 client: start-up, components, Watch,
PostgreSQL and Redis going down and coming back, and the `health` action."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flight_server.runner import Runner
from flight_server.settings import CacheSettings, RedisSettings

from support.proxies import TcpProxy
from support.servers import (
    ServerHandle,
    create_database,
    drop_database,
    pg_settings,
    runner_settings,
    start_server,
    stop_server,
)
from support.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthClient:
    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = health_pb2_grpc.HealthStub(self.channel)

    def check(self, service: str = "") -> Any:
        """The status, or the gRPC status code of a failed check."""
        try:
            return self.stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        except grpc.RpcError as exc:
            return exc.code()

    def wait_for(self, service: str, status: Any, timeout_s: float = 20.0) -> None:
        wait_for(lambda: self.check(service) == status, timeout_s, f"{service!r} never became {status}")

    def watch(self, service: str) -> tuple[list[int], Any]:
        """Statuses as Watch delivers them (filled by a thread), and the call to cancel."""
        call = self.stub.Watch(health_pb2.HealthCheckRequest(service=service))
        seen: list[int] = []

        def collect() -> None:
            try:
                for reply in call:
                    seen.append(reply.status)
            except grpc.RpcError:
                pass

        threading.Thread(target=collect, daemon=True).start()
        return seen, call

    def close(self) -> None:
        self.channel.close()


def _wait(predicate: Any, timeout_s: float = 20.0) -> None:
    wait_for(predicate, timeout_s, "condition not reached in time")


@pytest.fixture
def runner_factory() -> Iterator[Any]:
    runners: list[Runner] = []

    def make(data_dir: Path, **settings: Any) -> Runner:
        runner = Runner(runner_settings(data_dir, **settings))
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.shutdown()


def test_health_not_serving_while_starting_then_serving(tmp_path: Path, runner_factory: Any) -> None:
    runner = runner_factory(tmp_path)
    gate = threading.Event()
    starting = threading.Thread(target=runner.start, args=(lambda con: gate.wait(30),), daemon=True)
    starting.start()
    _wait(lambda: runner.health.port != 0)
    client = HealthClient(runner.health.port)
    try:
        for service in ("", "flight", "duckdb"):
            assert client.check(service) == NOT_SERVING
        seen, call = client.watch("")
        _wait(lambda: seen == [NOT_SERVING])
        gate.set()
        starting.join(30)
        client.wait_for("", SERVING)
        assert client.check("flight") == SERVING
        assert client.check("duckdb") == SERVING
        _wait(lambda: seen == [NOT_SERVING, SERVING])
        runner.shutdown()  # draining: NOT_SERVING for good
        _wait(lambda: seen[-1] == NOT_SERVING)
        call.cancel()
    finally:
        client.close()


def test_health_unknown_and_unconfigured_services_are_not_found(tmp_path: Path, runner_factory: Any) -> None:
    runner = runner_factory(tmp_path)
    runner.start()
    client = HealthClient(runner.health.port)
    try:
        for service in ("postgres", "redis", "sync", "no-such-service"):
            assert client.check(service) == grpc.StatusCode.NOT_FOUND
        seen, call = client.watch("sync")
        _wait(lambda: seen == [SERVICE_UNKNOWN])
        call.cancel()
    finally:
        client.close()


def test_health_postgres_down_and_up(tmp_path: Path, runner_factory: Any) -> None:
    database = create_database()
    proxy = TcpProxy(5432)
    try:
        runner = runner_factory(
            tmp_path,
            postgres=pg_settings(database, port=proxy.port, breaker_failures=2, breaker_open_s=0.3),
            cache=CacheSettings(warm_top_n=0),
        )
        runner.start()
        client = HealthClient(runner.health.port)
        seen, call = client.watch("postgres")
        client.wait_for("postgres", SERVING)
        proxy.cut()
        client.wait_for("postgres", NOT_SERVING)
        assert client.check("") == SERVING  # DuckDB routes still answer: the server stays in
        assert client.check("duckdb") == SERVING
        _wait(
            lambda: (
                runner.app is not None and runner.app.postgres is not None and runner.app.postgres.breaker.trips >= 1
            )
        )
        proxy.restore()
        client.wait_for("postgres", SERVING)  # the checker's ping was the breaker's probe
        assert runner.app is not None and runner.app.postgres is not None
        assert runner.app.postgres.breaker.state == "closed"
        _wait(lambda: seen[-3:] == [SERVING, NOT_SERVING, SERVING])
        call.cancel()
        client.close()
    finally:
        proxy.cut()
        drop_database(database)


def test_health_redis_down_and_up(tmp_path: Path, runner_factory: Any) -> None:
    proxy = TcpProxy(6379)
    try:
        redis = RedisSettings(
            url=f"redis://127.0.0.1:{proxy.port}/0", key_prefix=f"health-{time.time_ns()}:", breaker_open_s=0.3
        )
        runner = runner_factory(tmp_path, redis=redis, cache=CacheSettings(warm_top_n=0))
        runner.start()
        client = HealthClient(runner.health.port)
        client.wait_for("redis", SERVING)
        proxy.cut()
        client.wait_for("redis", NOT_SERVING)
        assert client.check("") == SERVING  # the cache runs on L1 meanwhile
        proxy.restore()
        client.wait_for("redis", SERVING)
        client.close()
    finally:
        proxy.cut()


def test_health_action_reports_diagnostics(server: ServerHandle) -> None:
    server.get({"query": "domains.top", "cache": "use"})
    server.get({"query": "domains.top", "cache": "use"})
    health = server.action("health")
    assert health["version"] and health["uptime_s"] > 0
    assert health["engines"]["duckdb"]["status"] == "ok"
    assert health["server"]["state"] == "serving"
    assert set(health["cache_hit_ratios"]) == {"overall", "l1", "l2"}
    assert health["cache_hit_ratios"]["l1"] > 0
    assert health["sync"] == {"state": "off"}
    memory = health["memory"]
    assert memory["rss_bytes"] > 0 and memory["duckdb_memory_bytes"] is not None
    assert {"samples", "slope_bytes_per_s", "rising"} <= set(memory["trend"])
    assert isinstance(health["warnings"], list)


def test_health_right_after_start_is_not_degraded_by_unmeasured_cpu(tmp_path: Path) -> None:
    # no background sample for the whole test: the health action sees the start-up sample
    handle = start_server(tmp_path, health_interval_s=600)
    try:
        health = handle.action("health")
        assert health["memory"]["process_cpu_ratio"] is None
        assert health["memory"]["system_cpu_ratio"] is None
        assert not [w for w in health["warnings"] if "CPU" in w]
        # once a window has passed, a sample measures: figures within what is possible
        wait_for(
            lambda: handle.app.resources.sample().cpu_ratio is not None, 30, "CPU was never measured after start-up"
        )
        memory = handle.action("health")["memory"]
        assert 0 <= memory["process_cpu_ratio"] <= 1 and 0 <= memory["system_cpu_ratio"] <= 1
    finally:
        stop_server(handle)
