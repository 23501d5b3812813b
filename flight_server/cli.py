"""The `flight-server` command: serve, demo-data, query, ingest, sync."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import duckdb
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from flight_server import __version__
from flight_server.logs import configure_logging
from flight_server.settings import Settings

if TYPE_CHECKING:  # the server's parts load only for `serve`: other commands start fast
    from flight_server.app import App

logger = logging.getLogger(__name__)
err = Console(stderr=True)


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A progress callback drawing one bar per step on stderr."""
    with Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def update(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=max(total, 1))
            bar.update(tasks[step], completed=done, total=max(total, 1))

        yield update


def _fill_demo(con: duckdb.DuckDBPyConnection, settings: Settings, rows: int, seed: int, only_if_empty: bool) -> None:
    """Demo data into DuckDB and, when configured, PostgreSQL (each only if empty, on request)."""
    from flight_server import oltp
    from flight_server.demo import generate_demo_data

    uri = settings.postgres.uri
    with _progress() as progress:
        existing = con.sql("SELECT count(*) FROM cdx_records").fetchall()[0][0]
        if only_if_empty and existing:
            logger.info("demo data not generated: cdx_records has rows", extra={"fields": {"rows": existing}})
        else:
            summary = generate_demo_data(con, rows, seed=seed, progress=progress)
            err.print(
                f"demo data: {summary.cdx_records:,} CDX records, {summary.content_analytics:,} content rows, "
                f"{summary.performance_metrics:,} metrics, {summary.projects} projects, "
                f"{summary.domains:,} domains in {summary.seconds:.1f} s"
            )
        if uri:
            oltp.apply_schema(uri, settings.schemas_dir)
            if not only_if_empty or oltp.is_empty(uri):
                counts = oltp.seed_demo(uri, con, seed=seed, progress=progress)
                err.print(
                    f"demo data in PostgreSQL: {counts['projects']} projects, "
                    f"{counts['scrape_pages']:,} scrape pages, {counts['audit_logs']:,} audit log rows"
                )


def _print_demo_tokens(app: App) -> None:
    """A ready token per role, valid for a day, for trying the demo with auth on."""
    from flight_server.demo import DEMO_PROJECTS

    projects = tuple(p for p, _, _ in DEMO_PROJECTS[:3])
    err.print("demo tokens (24 h; send as 'authorization: Bearer <token>'):")
    for role in ("admin", "analyst", "viewer", "service"):
        token = app.auth.issue(f"demo-{role}", role, None if role == "admin" else projects, ttl_s=86400)
        scope = "all projects" if role == "admin" else ", ".join(projects)
        err.print(f"  {role:<8} ({scope}): {token}", soft_wrap=True, highlight=False)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from flight_server.serving import Runner, run

    def prepare(con: duckdb.DuckDBPyConnection) -> None:
        if args.demo:
            _fill_demo(con, settings, args.rows, args.seed, only_if_empty=True)

    def announce(runner: Runner) -> None:
        assert runner.app is not None
        location = runner.location
        ports = {"health_port": runner.health.port, "metrics_port": runner.metrics_port}
        logger.info("serving", extra={"fields": {"location": location, "version": __version__, **ports}})
        if args.demo and settings.auth.jwt_secret:
            _print_demo_tokens(runner.app)
        err.print(
            f"Chrono Flight {__version__} listening on {location} (Ctrl-C stops); "
            f"health on port {runner.health.port}, metrics on port {runner.metrics_port}",
            soft_wrap=True,
        )

    return run(settings, prepare, announce)


def cmd_health_check(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 when the health service answers SERVING (for container health checks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from flight_server.health import bind_address

    host = args.host or ("127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host)  # noqa: S104
    target = bind_address(host, args.port or settings.health_port)
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            err.print(f"{target}: {exc.code().name}: {exc.details()}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    err.print(f"{target} {args.service or '(server)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_demo_data(args: argparse.Namespace, settings: Settings) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(settings.duckdb_path))
    except duckdb.IOException as exc:
        err.print(f"cannot open the database (is the server running on this data directory?): {exc}")
        return 1
    try:
        from flight_server.datasets import apply_schema

        apply_schema(con, settings.schemas_dir)
        _fill_demo(con, settings, args.rows, args.seed, only_if_empty=False)
    finally:
        con.close()
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from flight_server.cli_ingest import run_ingest

    with _progress() as progress:
        return run_ingest(args, settings, progress)


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    from flight_server.cli_query import run_query

    return run_query(args, settings)


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    from flight_server.cli_sync import run_sync

    return run_sync(args, settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flight-server", description="Chrono Flight analytics server")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the Flight server")
    serve.add_argument("--demo", action="store_true", help="fill an empty data directory with demo data first")
    serve.add_argument("--rows", type=int, default=1_000_000, help="demo CDX rows (with --demo)")
    serve.add_argument("--seed", type=int, default=42, help="demo data seed (with --demo)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("health-check", help="ask the gRPC health service; exit 0 when SERVING")
    check.add_argument("--service", default="", help="component: flight, duckdb, postgres, redis ('' = server)")
    check.add_argument("--host", help="health host (default FLIGHT_HOST, or 127.0.0.1 when it binds all)")
    check.add_argument("--port", type=int, help="health port (default FLIGHT_HEALTH_PORT)")
    check.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    check.set_defaults(func=cmd_health_check)

    demo = sub.add_parser("demo-data", help="(re)generate the demo data set (server stopped)")
    demo.add_argument("--rows", type=int, default=1_000_000, help="CDX rows to generate")
    demo.add_argument("--seed", type=int, default=42, help="seed of the generator")
    demo.set_defaults(func=cmd_demo_data)

    query = sub.add_parser("query", help="run SQL or a named query against a server and print it")
    query.add_argument("sql", nargs="?", help="SQL text (read-only); omit with --name")
    query.add_argument("--name", help="named query, e.g. domains.top")
    query.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="parameter of a named query or of SQL with $name placeholders (repeatable); "
        "for SQL with $1, $2, ... the values alone",
    )
    query.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    query.add_argument("--output", "-o", help="write to this file instead of standard output")
    query.add_argument("--url", help="server URL (default grpc://FLIGHT_HOST:FLIGHT_PORT)")
    query.add_argument("--token", help="bearer token, when the server requires one")
    query.add_argument(
        "--max-rows",
        type=int,
        help="read only the first N rows; the server stops after them (default: 50 in table format, else all)",
    )
    query.set_defaults(func=cmd_query)

    ingest = sub.add_parser("ingest", help="push a Parquet, CSV or Arrow IPC file into a dataset (DoPut)")
    ingest.add_argument("dataset", help="dataset name, e.g. cdx_records")
    ingest.add_argument("file", help="the file to send; read and sent batch by batch")
    ingest.add_argument("--format", choices=["auto", "parquet", "csv", "arrow"], default="auto", help="by suffix")
    ingest.add_argument("--batch-rows", type=int, default=65_536, help="rows per batch sent (Parquet)")
    ingest.add_argument("--url", help="server URL (default grpc://FLIGHT_HOST:FLIGHT_PORT)")
    ingest.add_argument("--token", help="bearer token, when the server requires one")
    ingest.set_defaults(func=cmd_ingest)

    from flight_server.cli_sync import add_parser as add_sync

    add_sync(sub)
    sub.choices["sync"].set_defaults(func=cmd_sync)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format if args.command == "serve" else "text")
    if args.command != "serve":
        logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
    return int(args.func(args, settings))


if __name__ == "__main__":
    sys.exit(main())
