"""Graceful shutdown: drain refuses new calls, lets streams finish, stops everything, exits 0."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pyarrow.flight as flight
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flight_server.demo.analytics import generate_demo_data
from flight_server.runner import Runner
from flight_server.settings import CacheSettings

from support.servers import DEMO_SEED, runner_settings, serve_env
from support.waiting import wait_for

BIN = Path(sys.executable).parent / "flight-server"
ROWS = 20_000
COPIES = 50  # a result of ROWS * COPIES rows, too large to cache: it streams from DuckDB
BIG = {"sql": f"SELECT a.* FROM cdx_records a, (SELECT 1 FROM cdx_records LIMIT {COPIES}) b"}


def _health(port: int, service: str = "") -> object:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            return (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                .status
            )
        except grpc.RpcError as exc:
            return exc.code()


def _wait(predicate: Callable[[], object], timeout_s: float = 20.0) -> None:
    wait_for(predicate, timeout_s, "condition not reached in time")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with demo data, for servers started one after the other."""
    path = tmp_path_factory.mktemp("serving")
    runner = Runner(runner_settings(path))
    runner.start(lambda con: generate_demo_data(con, ROWS, seed=DEMO_SEED))
    runner.shutdown()
    return path


def test_serving_drain_refuses_new_calls_and_finishes_streams(data_dir: Path) -> None:
    runner = Runner(runner_settings(data_dir, drain_timeout_s=30, cache=CacheSettings(warm_top_n=0)))
    runner.start()
    assert runner.app is not None
    app = runner.app
    client = flight.connect(runner.location)
    reader = client.do_get(flight.Ticket(json.dumps(BIG).encode()))
    rows = reader.read_chunk().data.num_rows
    stopping = threading.Thread(target=runner.shutdown)
    stopping.start()
    _wait(lambda: app.lifecycle.state == "draining")
    assert _health(runner.health.port) == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(flight.FlightUnavailableError, match="server is shutting down"):
        list(client.do_action(flight.Action("health", b"")))
    assert stopping.is_alive()  # waiting for the stream
    for chunk in reader:
        rows += chunk.data.num_rows
    assert rows == ROWS * COPIES
    stopping.join(30)
    assert not stopping.is_alive()
    assert app.lifecycle.state == "stopped"
    assert _health(runner.health.port) == grpc.StatusCode.UNAVAILABLE  # the port is closed
    client.close()


# -- the real command, with signals -------------------------------------------------------------


def _serve(data_dir: Path, **extra: str) -> tuple[subprocess.Popen[str], str, int, list[str]]:
    env = serve_env(data_dir, FLIGHT_CACHE__WARM_TOP_N="0", FLIGHT_LOG_FORMAT="json", **extra)
    proc = subprocess.Popen([str(BIN), "serve"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        match = re.search(r"listening on (grpc://\S+) .*health on port (\d+)", line)
        if match:
            # keep reading stderr so that the server never blocks on a full pipe
            threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
            return proc, match.group(1), int(match.group(2)), lines
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines))


@pytest.fixture
def served(data_dir: Path) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serving_sigterm_during_a_large_doget_finishes_it_and_exits_0(
    data_dir: Path, served: list[subprocess.Popen[str]]
) -> None:
    proc, url, health_port, lines = _serve(data_dir, FLIGHT_DRAIN_TIMEOUT_S="30")
    served.append(proc)
    client = flight.connect(url)
    reader = client.do_get(flight.Ticket(json.dumps(BIG).encode()))
    rows = reader.read_chunk().data.num_rows
    proc.send_signal(signal.SIGTERM)
    _wait(lambda: _health(health_port) != health_pb2.HealthCheckResponse.SERVING)
    with pytest.raises(flight.FlightUnavailableError, match="server is shutting down"):
        client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"sql": "SELECT 1"}).encode()))
    _wait(lambda: any("draining: new calls are refused" in line for line in lines))
    # the result is far larger than what flow control lets through unread: the drain waits for it
    assert proc.poll() is None
    assert not any('"msg": "stopped"' in line for line in lines)
    for chunk in reader:
        rows += chunk.data.num_rows
    assert rows == ROWS * COPIES
    assert proc.wait(timeout=30) == 0
    client.close()
    log = [json.loads(line) for line in lines if line.startswith("{")]
    stopped = [entry for entry in log if entry.get("msg") == "stopped"]
    assert stopped and stopped[0]["drained"] is True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serving_signal_when_idle_exits_0_at_once(
    data_dir: Path, served: list[subprocess.Popen[str]], sig: signal.Signals
) -> None:
    proc, _url, _port, _lines = _serve(data_dir)
    served.append(proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 0  # generous: a loaded machine is slow, and no timing is asserted


def test_serving_drain_timeout_bounds_a_stream_nobody_reads(
    data_dir: Path, served: list[subprocess.Popen[str]]
) -> None:
    proc, url, _port, lines = _serve(data_dir, FLIGHT_DRAIN_TIMEOUT_S="1")
    served.append(proc)
    client = flight.connect(url)
    reader = client.do_get(flight.Ticket(json.dumps(BIG).encode()))
    reader.read_chunk()  # then stop reading: the server blocks on flow control
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0  # generous: a loaded machine is slow, and no timing is asserted
    with pytest.raises(flight.FlightUnavailableError, match=r"(?i)socket closed|connection"):
        reader.read_all()
    client.close()
    log = [json.loads(line) for line in lines if line.startswith("{")]
    gave_up = [entry for entry in log if entry.get("msg") == "drain timeout passed; cancelling what still runs"]
    assert gave_up and gave_up[0]["queries"] == 1  # the unread stream's query was cancelled
    stopped = [entry for entry in log if entry.get("msg") == "stopped"]
    assert stopped and stopped[0]["drained"] is False  # stopped without waiting for the stream


def test_serving_second_signal_exits_without_waiting(data_dir: Path, served: list[subprocess.Popen[str]]) -> None:
    proc, url, _port, lines = _serve(data_dir, FLIGHT_DRAIN_TIMEOUT_S="60")
    served.append(proc)
    client = flight.connect(url)
    reader = client.do_get(flight.Ticket(json.dumps(BIG).encode()))
    reader.read_chunk()  # a stream in flight: the drain would wait a minute for it
    proc.send_signal(signal.SIGTERM)
    _wait(lambda: any("draining" in line for line in lines))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 130
    client.close()
