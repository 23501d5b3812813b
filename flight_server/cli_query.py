"""`flight-server query`: run SQL or a named query against a server and print the result."""

from __future__ import annotations

import argparse
import io
import json
import sys
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from chrono_flight_client import ChronoFlightClient, ChronoFlightError
from flight_server.settings import Settings


def _sql_value(text: str) -> Any:
    """A positional SQL parameter: JSON numbers, booleans and null as such, else text."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, int | float | bool) or value is None else text


def build_command(args: argparse.Namespace) -> dict[str, Any]:
    if bool(args.sql) == bool(args.name):
        raise SystemExit("flight-server query: give either SQL text or --name NAME")
    if args.name:
        params: dict[str, str] = {}
        for item in args.param:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SystemExit(f"flight-server query: parameter '{item}' must be KEY=VALUE")
            params[key] = value
        return {"query": args.name, "params": params}
    return {"sql": args.sql, "params": [_sql_value(p) for p in args.param]}


def _render_table(table: pa.Table, max_rows: int, out: Console) -> None:
    view = Table(show_lines=False, header_style="bold")
    for field in table.schema:
        view.add_column(f"{field.name}\n[dim]{field.type}[/dim]")
    for row in table.slice(0, max_rows).to_pylist():
        view.add_row(*("" if v is None else str(v) for v in row.values()))
    out.print(view)
    shown = min(max_rows, table.num_rows)
    out.print(f"[dim]{table.num_rows:,} rows ({shown:,} shown)[/dim]")


def write_result(table: pa.Table, fmt: str, sink: BinaryIO) -> None:
    if fmt == "csv":
        pacsv.write_csv(table, sink)
    elif fmt == "json":
        sink.write(json.dumps(table.to_pylist(), default=str, indent=1).encode() + b"\n")
    elif fmt == "parquet":
        pq.write_table(table, sink, compression="zstd")


def run_query(args: argparse.Namespace, settings: Settings) -> int:
    command = build_command(args)
    url = args.url or f"grpc://{settings.host}:{settings.port}"
    err = Console(stderr=True)
    try:
        with ChronoFlightClient.connect(url, token=args.token) as client:
            table = client.fetch(command)
    except ChronoFlightError as exc:
        err.print(f"[red]{exc.status}[/red]: {exc}")
        return 2
    if args.format == "table":
        if args.output:
            with open(args.output, "w") as text:
                _render_table(table, args.max_rows, Console(file=text, width=200))
        else:
            _render_table(table, args.max_rows, Console())
        return 0
    if args.format == "parquet" and not args.output and sys.stdout.isatty():
        err.print("parquet output is binary: give --output FILE or redirect standard output")
        return 2
    if args.output:
        with open(args.output, "wb") as sink:
            write_result(table, args.format, sink)
    else:
        buffer = io.BytesIO()
        write_result(table, args.format, buffer)
        sys.stdout.buffer.write(buffer.getvalue())
        sys.stdout.flush()
    return 0
