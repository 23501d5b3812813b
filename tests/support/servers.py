"""Real Flight servers for tests: in-process on port 0, settings for `serve`, PostgreSQL databases."""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi as pg
import pyarrow as pa
import pyarrow.flight as flight

from flight_server.app import App
from flight_server.demo.analytics import generate_demo_data
from flight_server.demo.oltp import seed_demo
from flight_server.engines import postgres_schema as oltp
from flight_server.server import ChronoFlightServer
from flight_server.settings import DuckDBSettings, PostgresSettings, Settings

DEMO_ROWS = 200_000
DEMO_SEED = 42


@dataclass
class ServerHandle:
    app: App
    server: ChronoFlightServer
    location: str
    client: flight.FlightClient
    data_dir: Path

    @property
    def duckdb_path(self) -> Path:
        return self.app.settings.duckdb_path

    def run(self, command: dict[str, Any]) -> pa.Table:
        """GetFlightInfo then DoGet of its ticket: the two-round-trip path."""
        descriptor = flight.FlightDescriptor.for_command(json.dumps(command).encode())
        info = self.client.get_flight_info(descriptor)
        return self.client.do_get(info.endpoints[0].ticket).read_all()

    def get(self, command: dict[str, Any]) -> pa.Table:
        """DoGet with the command as its ticket: the one-round-trip path."""
        return self.client.do_get(flight.Ticket(json.dumps(command).encode())).read_all()

    def action(self, name: str, body: dict[str, Any] | None = None) -> Any:
        payload = json.dumps(body).encode() if body is not None else b""
        results = list(self.client.do_action(flight.Action(name, payload)))
        return json.loads(results[0].body.to_pybytes())


def start_server(data_dir: Path, rows: int = 0, **groups: Any) -> ServerHandle:
    """A real server on a free port; `rows` > 0 fills the demo data first.

    Keyword arguments are settings groups (`cache=CacheSettings(...)`); any other
    keyword is a DuckDB setting (`query_deadline_s=0.5`).
    """
    duckdb = {k: v for k, v in groups.items() if k not in Settings.model_fields}
    others = {k: v for k, v in groups.items() if k in Settings.model_fields}
    settings = Settings(
        data_dir=data_dir,
        port=0,
        log_format="text",
        duckdb=DuckDBSettings(threads=2, memory_limit="2GB", **duckdb),
        **others,
    )

    def prepare(con: Any) -> None:
        if rows and not con.sql("SELECT count(*) FROM cdx_records").fetchall()[0][0]:
            generate_demo_data(con, rows, seed=DEMO_SEED)
        uri = settings.postgres.uri
        if rows and uri:
            oltp.apply_schema(uri, settings.schemas_dir)
            if oltp.is_empty(uri):
                seed_demo(uri, con, seed=DEMO_SEED)

    app = App(settings, prepare=prepare)
    server = ChronoFlightServer(app, "grpc://127.0.0.1:0")
    threading.Thread(target=server.serve, daemon=True).start()
    location = f"grpc://127.0.0.1:{server.port}"
    return ServerHandle(app, server, location, flight.connect(location), data_dir)


def runner_settings(data_dir: Path, **groups: Any) -> Settings:
    """Settings for a `Runner` (the whole `serve`): every port free, checks every 0.2 s."""
    duckdb = {k: v for k, v in groups.items() if k not in Settings.model_fields}
    others = {"health_interval_s": 0.2, **{k: v for k, v in groups.items() if k in Settings.model_fields}}
    return Settings(
        data_dir=data_dir,
        port=0,
        health_port=0,
        metrics_port=0,
        log_format="text",
        duckdb=DuckDBSettings(threads=2, memory_limit="1GB", **duckdb),
        **others,
    )


def stop_server(handle: ServerHandle) -> None:
    handle.client.close()
    handle.server.shutdown()
    handle.app.close()


def serve_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a `flight-server` subprocess: free ports, small DuckDB, no FLIGHT_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIGHT_")}
    env.update(
        {
            "FLIGHT_DATA_DIR": str(data_dir),
            "FLIGHT_PORT": "0",
            "FLIGHT_HEALTH_PORT": "0",
            "FLIGHT_METRICS_PORT": "0",
            "FLIGHT_DUCKDB__THREADS": "2",
            "FLIGHT_DUCKDB__MEMORY_LIMIT": "1GB",
            "FLIGHT_LOG_FORMAT": "text",
            **extra,
        }
    )
    return env


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def create_database() -> str:
    """A fresh PostgreSQL database for this test run; returns its name."""
    name = f"chrono_test_{uuid.uuid4().hex[:10]}"
    with pg.connect(PG_ADMIN, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with pg.connect(PG_ADMIN, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_settings(database: str, port: int = 5432, **extra: Any) -> PostgresSettings:
    """The owner connects as postgres; user queries run as the SELECT-only chrono_reader."""
    return PostgresSettings(
        uri=f"postgresql://postgres@127.0.0.1:{port}/{database}",
        reader_uri=f"postgresql://chrono_reader@127.0.0.1:{port}/{database}",
        **extra,
    )
