"""The `flight-server` command: serve, demo-data, demo-tokens, query, ingest, sync.

Whatever fails, the command ends with one line on stderr saying what was wrong and what
to do, and a non-zero exit code: 1 for a problem to fix (flight_server.startup), 130 for
Ctrl-C. The module imports only the standard library at the top, so that Ctrl-C right
after launch already finds the handler in place (`main` installs it before anything else).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from flight_server import __version__
from flight_server.startup import CommittedInterrupt, Interrupts, StartupError

if TYPE_CHECKING:  # the server's parts load only for `serve`: other commands start fast
    import duckdb
    from rich.console import Console

    from flight_server.settings import Settings

logger = logging.getLogger(__name__)
interrupts = Interrupts()


def _err() -> Console:
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A progress callback drawing one bar per step on stderr."""
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        console=_err(),
        transient=False,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def update(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=max(total, 1))
            bar.update(tasks[step], completed=done, total=max(total, 1))

        yield update


def _reach_postgres(settings: Settings) -> str | None:
    """The PostgreSQL URI with its schema applied, checked before any data changes."""
    import adbc_driver_manager

    from flight_server.engines import postgres_schema as oltp
    from flight_server.engines.postgres import with_connect_timeout
    from flight_server.errors import one_line

    if not settings.postgres.uri:
        return None
    uri = with_connect_timeout(settings.postgres.uri, settings.postgres.connect_timeout_s)
    try:
        oltp.apply_schema(uri, settings.schemas_dir, settings.postgres.reader_uri)
    except (adbc_driver_manager.Error, OSError) as exc:
        raise StartupError(
            f"cannot reach PostgreSQL ({one_line(str(exc).replace('[libpq] ', ''), 200)}): start it and check "
            "FLIGHT_POSTGRES__URI, or unset FLIGHT_POSTGRES__URI for DuckDB demo data alone"
        ) from None
    return uri


def _fill_demo(con: duckdb.DuckDBPyConnection, settings: Settings, rows: int, seed: int, only_if_empty: bool) -> None:
    """Demo data into DuckDB and, when configured, PostgreSQL (each only if empty, on request).

    Both stores change together or not at all: the PostgreSQL rows load inside the
    DuckDB transaction and commit just before it, with Ctrl-C held off from the first
    commit to the last. `serve --demo` with PostgreSQL unreachable fills DuckDB alone
    (the server starts without PostgreSQL); `demo-data` stops before changing anything.
    """
    from flight_server.demo.analytics import generate_demo_data
    from flight_server.demo.oltp import seed_demo
    from flight_server.engines import postgres_schema as oltp

    try:
        uri = _reach_postgres(settings)
    except StartupError as exc:
        if not only_if_empty:
            raise
        logger.warning("demo rows not loaded into PostgreSQL; restart with --demo once it is up: %s", exc)
        uri = None
    existing = con.sql("SELECT count(*) FROM cdx_records").fetchall()[0][0]
    generate = not (only_if_empty and existing)
    seed_postgres = uri is not None and (not only_if_empty or oltp.is_empty(uri))
    if not generate:
        logger.info("demo data not generated: cdx_records has rows", extra={"fields": {"rows": existing}})
    counts: dict[str, int] = {}
    with _progress() as progress:

        def load_postgres() -> None:
            if uri is not None and seed_postgres:
                counts.update(seed_demo(uri, con, seed=seed, progress=progress, before_commit=interrupts.defer))
            interrupts.defer()

        try:
            if generate:
                summary = generate_demo_data(con, rows, seed=seed, progress=progress, before_commit=load_postgres)
            elif seed_postgres:
                load_postgres()
        except BaseException:
            interrupts.resume(stop=False)
            raise
    if generate:
        _err().print(
            f"demo data: {summary.cdx_records:,} CDX records, {summary.content_analytics:,} content rows, "
            f"{summary.performance_metrics:,} metrics, {summary.projects} projects, "
            f"{summary.domains:,} domains in {summary.seconds:.1f} s"
        )
    if counts:
        _err().print(
            f"demo data in PostgreSQL: {counts['projects']} projects, "
            f"{counts['scrape_pages']:,} scrape pages, {counts['audit_logs']:,} audit log rows"
        )
    interrupts.resume()  # a Ctrl-C held off during the commits stops the command now


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from flight_server.runner import Runner, run

    def prepare(con: duckdb.DuckDBPyConnection) -> None:
        if args.demo:
            _fill_demo(con, settings, args.rows, args.seed, only_if_empty=True)

    def announce(runner: Runner) -> None:
        location = runner.location
        ports = {"health_port": runner.health.port, "metrics_port": runner.metrics_port}
        logger.info("serving", extra={"fields": {"location": location, "version": __version__, **ports}})
        _err().print(
            f"Chrono Flight {__version__} listening on {location} (Ctrl-C stops); "
            f"health on port {runner.health.port}, metrics on port {runner.metrics_port}",
            soft_wrap=True,
        )

    return run(settings, prepare, announce)


def cmd_health_check(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 when the health service answers SERVING (for container health checks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from flight_server.ops.health import bind_address

    host = args.host or ("127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host)  # noqa: S104
    target = bind_address(host, args.port or settings.health_port)
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            _err().print(f"{target}: {exc.code().name}: {exc.details()}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    _err().print(f"{target} {args.service or '(server)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_demo_data(args: argparse.Namespace, settings: Settings) -> int:
    from flight_server.engines.duckdb_schema import apply_schema
    from flight_server.startup import open_duckdb, prepare_data_dir

    prepare_data_dir(settings.data_dir)
    con = open_duckdb(settings.duckdb_path)
    try:
        apply_schema(con, settings.schemas_dir)
        _fill_demo(con, settings, args.rows, args.seed, only_if_empty=False)
    finally:
        con.close()
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from flight_server.cli.ingest import run_ingest

    with _progress() as progress:
        return run_ingest(args, settings, progress)


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    from flight_server.cli.query import run_query

    return run_query(args, settings)


def cmd_demo_tokens(args: argparse.Namespace, settings: Settings) -> int:
    from flight_server.cli.tokens import run_demo_tokens

    return run_demo_tokens(args, settings)


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    from flight_server.cli.sync import run_sync

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

    from flight_server.cli.tokens import add_parser as add_demo_tokens

    add_demo_tokens(sub)
    sub.choices["demo-tokens"].set_defaults(func=cmd_demo_tokens)

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

    from flight_server.cli.sync import add_parser as add_sync

    add_sync(sub)
    sub.choices["sync"].set_defaults(func=cmd_sync)
    return parser


def _interrupted(command: str, exc: BaseException) -> str:
    committed = isinstance(exc, CommittedInterrupt) or interrupts.committed
    if command == "serve":
        done = "the demo data it generated is complete" if committed else "no demo data was committed"
        return f"interrupted during start-up: the server did not start, and {done}"
    if committed:
        return "interrupted after the demo data was committed: it is complete, and the command stopped there"
    if command == "demo-data":
        return "interrupted: the demo data was not changed (nothing was committed); run demo-data again"
    if command == "flight-server":
        return "interrupted before the command started"
    return f"interrupted: {command} stopped before it finished"


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; failures end as one line on stderr (see the module docstring)."""
    interrupts.install()
    command = "flight-server"
    try:
        from pydantic import ValidationError

        from flight_server.ops.logs import configure_logging
        from flight_server.settings import Settings
        from flight_server.startup import settings_problem

        args = build_parser().parse_args(argv)
        command = str(args.command)
        try:
            settings = Settings()
        except ValidationError as exc:
            raise StartupError(settings_problem(exc)) from None
        configure_logging(settings.log_level, settings.log_format if args.command == "serve" else "text")
        if args.command != "serve":
            logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
        return int(args.func(args, settings))
    except StartupError as exc:
        _err().print(f"{command}: {exc}", soft_wrap=True, highlight=False, markup=False)
        return 1
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        if not (interrupts.requested or isinstance(exc, KeyboardInterrupt)):
            logger.debug("command failed", exc_info=True)
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            _err().print(
                f"{command} failed: {message} (FLIGHT_LOG_LEVEL=DEBUG shows the details)",
                soft_wrap=True,
                highlight=False,
                markup=False,
            )
            return 1
        _err().print(f"{command}: {_interrupted(command, exc)}", soft_wrap=True, highlight=False, markup=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
