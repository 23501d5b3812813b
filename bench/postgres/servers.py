"""The Flight servers of B5-B7 and the calls the benchmarks make on them."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from bench.common import FlightServer, log
from bench.postgres.databases import READER_ROLE, pg_uri


class FlightFailure(Exception):
    """A command the server refused or failed, with its one-line message."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for marker in (". Detail:", ". gRPC client debug context"):
        text = text.split(marker, 1)[0]
    return " ".join(text.split())[:300]


@dataclass
class Server:
    name: str
    process: FlightServer
    client: flight.FlightClient
    options: flight.FlightCallOptions

    def fetch(self, command: Mapping[str, Any]) -> pa.Table:
        ticket = flight.Ticket(json.dumps({**command, "cache": "bypass"}).encode())
        try:
            return self.client.do_get(ticket, self.options).read_all()
        except pa.ArrowException as exc:
            raise FlightFailure(one_line(exc)) from None

    def timed(self, command: Mapping[str, Any]) -> tuple[float, pa.Table]:
        started = time.perf_counter()
        table = self.fetch(command)
        return time.perf_counter() - started, table

    def route(self, command: Mapping[str, Any]) -> dict[str, Any]:
        """The routing decision (GetFlightInfo app_metadata), without running the query."""
        descriptor = flight.FlightDescriptor.for_command(json.dumps({**command, "cache": "bypass"}).encode())
        try:
            info = self.client.get_flight_info(descriptor, self.options)
        except pa.ArrowException as exc:
            raise FlightFailure(one_line(exc)) from None
        meta = json.loads(info.endpoints[0].app_metadata or b"{}") if info.endpoints else {}
        if not meta:
            with contextlib.suppress(AttributeError, ValueError):
                meta = json.loads(info.app_metadata or b"{}")
        return {k: meta.get(k) for k in ("engine", "reason", "route")}


@contextlib.contextmanager
def running_servers(specs: Mapping[str, tuple[Path, dict[str, str]]], run_dir: Path) -> Iterator[dict[str, Server]]:
    processes: dict[str, FlightServer] = {}
    servers: dict[str, Server] = {}
    try:
        for name, (data_dir, env) in specs.items():
            processes[name] = FlightServer(data_dir, run_dir / f"flight_server_{name}.log", env)
        for name, process in processes.items():
            ready = process.wait_ready()
            log(f"server {name} ready in {ready:.1f} s at {process.location} (pid {process.pid})")
            timeout = float(specs[name][1]["FLIGHT_DUCKDB__QUERY_DEADLINE_S"]) + 60
            servers[name] = Server(
                name, process, flight.connect(process.location), flight.FlightCallOptions(timeout=timeout)
            )
        yield servers
    finally:
        for server in servers.values():
            with contextlib.suppress(Exception):
                server.client.close()
        for process in processes.values():
            process.stop()


def server_env(db_uri_owner: str, db_name: str, deadline_s: float) -> dict[str, str]:
    return {
        "FLIGHT_POSTGRES__URI": db_uri_owner,
        "FLIGHT_POSTGRES__READER_URI": pg_uri(db_name, READER_ROLE),
        "FLIGHT_CACHE__L1_MAX_ENTRIES": "0",
        "FLIGHT_CACHE__WARM_TOP_N": "0",
        "FLIGHT_DUCKDB__MEMORY_LIMIT": "6GB",
        "FLIGHT_DUCKDB__QUERY_DEADLINE_S": str(int(deadline_s)),
        # no DuckDB replicas: these scenarios measure PostgreSQL and hybrid execution themselves
        "FLIGHT_SYNC__ENABLED": "false",
    }


def refresh_registry(server: Server) -> None:
    """Make the server's table registry re-read the engines' tables.

    The registry refreshes when a query names a table it does not know; the query itself
    then fails (no engine has the table), which is expected.
    """
    with contextlib.suppress(FlightFailure):
        server.route({"sql": "SELECT * FROM chrono_bench_registry_refresh"})
    route = server.route({"sql": "SELECT count(*) FROM cdx_records", "engine": "postgres"})
    if route.get("engine") != "postgres":
        raise RuntimeError(f"the copy server does not see cdx_records in PostgreSQL: {route}")


def probe_restart(data_dir: Path, env: dict[str, str], run_dir: Path) -> dict[str, Any]:
    """Start a server over the database holding the copies: does it come up?"""
    process = FlightServer(data_dir, run_dir / "flight_server_restart.log", env)
    try:
        ready = process.wait_ready(timeout_s=120)
        outcome: dict[str, Any] = {"started": True, "ready_s": round(ready, 1)}
    except (RuntimeError, TimeoutError) as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        outcome = {"started": False, "error": lines[-1][:400] if lines else one_line(exc)}
    finally:
        process.stop()
    log(f"restart over the database with the copies: {outcome}")
    return outcome
