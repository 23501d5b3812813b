"""`flight-server sync status|run|validate`: the sync actions of a running server."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from flight_server.settings import Settings


def _tables_view(status: dict[str, Any]) -> Table:
    view = Table(header_style="bold")
    for column in ("table", "replicated", "staleness s", "changes behind", "retry"):
        view.add_column(column)
    for name, table in status["tables"].items():
        retry = table["retry"]
        view.add_row(
            name,
            "yes" if table["replicated"] else "no",
            "" if table["staleness_s"] is None else f"{table['staleness_s']:.2f}",
            f"{table['changes_behind']:,}",
            "" if retry is None else f"attempt {retry['attempts']}: {retry['reason']}",
        )
    return view


def _validation_view(result: dict[str, Any]) -> Table:
    view = Table(header_style="bold")
    for column in ("table", "rows (PostgreSQL)", "rows (replica)", "ranges", "mismatched", "repaired"):
        view.add_column(column)
    for check in result["tables"]:
        view.add_row(
            check["table"],
            f"{check['source_rows']:,}",
            f"{check['replica_rows']:,}",
            str(check["ranges"]),
            ", ".join(check["mismatched_ranges"][:4]) + (" ..." if len(check["mismatched_ranges"]) > 4 else ""),
            "yes" if check["repaired"] else "",
        )
    return view


def _print_status(out: Console, status: dict[str, Any]) -> None:
    lag = status["lag_s"]
    out.print(f"sync {status['state']}; lag p50 {lag['p50']} s, p99 {lag['p99']} s ({lag['samples']} changes)")
    if status["last_error"]:
        out.print(f"[red]last error[/red]: {status['last_error']}")
    out.print(_tables_view(status))


def run_sync(args: argparse.Namespace, settings: Settings) -> int:
    from chrono_flight_client import ChronoFlightClient, ChronoFlightError

    url = args.url or f"grpc://{settings.host}:{settings.port}"
    out, err = Console(), Console(stderr=True)
    try:
        with ChronoFlightClient.connect(url, token=args.token) as client:
            if args.sync_command == "status":
                result = client.action("sync.status")
            elif args.sync_command == "run":
                result = client.action("sync.run")
            else:
                tables = args.table or None
                result = client.action("sync.validate", {"tables": tables, "repair": not args.no_repair})
    except ChronoFlightError as exc:
        err.print(f"[red]{exc.status}[/red]: {exc}")
        return 2
    if args.format == "json":
        sys.stdout.write(json.dumps(result, indent=1, default=str) + "\n")
    elif args.sync_command == "status":
        _print_status(out, result)
    elif args.sync_command == "run":
        cycle = result["cycle"]
        out.print(
            f"applied {sum(cycle['applied'].values()):,} rows; copied whole: {', '.join(cycle['copied']) or 'none'}"
        )
        _print_status(out, result["status"])
    else:
        out.print("consistent" if result["consistent"] else "[yellow]differences found[/yellow]")
        out.print(_validation_view(result))
    if args.sync_command == "validate" and not result["consistent"] and args.no_repair:
        return 1
    return 0


def add_parser(sub: Any) -> None:
    sync = sub.add_parser("sync", help="status, run or validate the PostgreSQL to DuckDB replicas of a server")
    sync.add_argument("sync_command", choices=["status", "run", "validate"], help="what to do")
    sync.add_argument("--table", action="append", default=[], help="validate only this table (repeatable)")
    sync.add_argument("--no-repair", action="store_true", help="validate: report differences, do not re-copy")
    sync.add_argument("--format", choices=["table", "json"], default="table")
    sync.add_argument("--url", help="server URL (default grpc://FLIGHT_HOST:FLIGHT_PORT)")
    sync.add_argument("--token", help="bearer token (sync run and validate need the admin role)")
