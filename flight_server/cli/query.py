"""`flight-server query`: run SQL or a named query against a server and print the result.

Parameters: `-p KEY=VALUE` for a named query, and for SQL with named placeholders
(`$domain`); `-p VALUE` for SQL with positional ones (`$1`, `$2`, `?`). A value is
sent as a JSON number, boolean, null or string when it parses as one, else as text.
`--max-rows N` reads only the first N rows: the stream is then cancelled, so the
server stops computing and sending the rest (50 by default for the table format).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlglot
from rich.console import Console
from rich.table import Table
from sqlglot import exp

from chrono_flight_client import ChronoFlightClient, ChronoFlightError
from flight_server.settings import Settings

TABLE_ROWS = 50  # rows read and shown by the table format without --max-rows


def _sql_value(text: str) -> Any:
    """A SQL parameter: JSON numbers, booleans, null and strings as such, else the text."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, int | float | bool | str) or value is None else text


def _key_values(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"flight-server query: parameter '{item}' must be KEY=VALUE")
        params[key] = value
    return params


def _placeholders(sql: str) -> list[str]:
    """The SQL's placeholder names: digits for `$1`, the name for `$name`, '?' for `?`."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError:
        return []  # the server words the syntax error
    return [p.name for p in tree.find_all(exp.Placeholder)] if tree is not None else []


def _sql_params(sql: str, items: list[str]) -> list[Any] | dict[str, Any]:
    """`-p` values for SQL: an object for `$name` placeholders, else a list for `$1`, `$2`, ..."""
    names = _placeholders(sql)
    if any(not (name.isdigit() or name == "?") for name in names):
        return {key: _sql_value(value) for key, value in _key_values(items).items()}
    for item in items:
        key, sep, _ = item.partition("=")
        if sep and key.isidentifier():
            raise SystemExit(
                f"flight-server query: '-p {item}' names a parameter, but the SQL has positional "
                f"placeholders ($1, $2, ...): give the value alone (-p VALUE), or send this text "
                f"as a JSON string (-p '\"{item}\"')"
            )
    return [_sql_value(item) for item in items]


def build_command(args: argparse.Namespace) -> dict[str, Any]:
    if bool(args.sql) == bool(args.name):
        raise SystemExit("flight-server query: give either SQL text or --name NAME")
    if args.name:
        return {"query": args.name, "params": _key_values(args.param)}
    return {"sql": args.sql, "params": _sql_params(args.sql, args.param)}


def _render_table(table: pa.Table, truncated: bool, out: Console) -> None:
    view = Table(show_lines=False, header_style="bold")
    for field in table.schema:
        view.add_column(f"{field.name}\n[dim]{field.type}[/dim]")
    for row in table.to_pylist():
        view.add_row(*("" if v is None else str(v) for v in row.values()))
    out.print(view)
    more = "; stopped at --max-rows, the rest was not fetched" if truncated else ""
    out.print(f"[dim]{table.num_rows:,} rows{more}[/dim]")


def _csv_ready(table: pa.Table) -> pa.Table:
    """The table with every column in a type the CSV writer takes.

    Extension types (JSON, PostgreSQL's opaque types) become their storage (the JSON
    text); lists, structs, maps and anything else without a text form become JSON text.
    """
    columns = []
    for column in table.columns:
        kind = column.type
        if isinstance(kind, pa.BaseExtensionType):
            column = pa.chunked_array([chunk.storage for chunk in column.chunks], type=kind.storage_type)
            kind = kind.storage_type
        if pa.types.is_nested(kind) or not _has_text_form(kind):
            values = column.to_pylist()
            column = pa.array([None if v is None else json.dumps(v, default=str) for v in values], pa.string())
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def _has_text_form(kind: pa.DataType) -> bool:
    try:
        pa.array([], kind).cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return False
    return True


def write_result(table: pa.Table, fmt: str, sink: BinaryIO) -> None:
    if fmt == "csv":
        pacsv.write_csv(_csv_ready(table), sink)
    elif fmt == "json":
        sink.write(json.dumps(table.to_pylist(), default=str, indent=1).encode() + b"\n")
    elif fmt == "parquet":
        pq.write_table(table, sink, compression="zstd")


def run_query(args: argparse.Namespace, settings: Settings) -> int:
    command = build_command(args)
    url = args.url or f"grpc://{settings.host}:{settings.port}"
    err = Console(stderr=True)
    max_rows = args.max_rows if args.max_rows is not None else TABLE_ROWS if args.format == "table" else None
    if max_rows is not None and max_rows < 1:
        raise SystemExit("flight-server query: --max-rows must be 1 or more")
    try:
        with ChronoFlightClient.connect(url, token=args.token) as client, client.stream(command) as stream:
            table = stream.read_all(max_rows)
            truncated = stream.truncated
    except ChronoFlightError as exc:
        err.print(f"[red]{exc.status}[/red]: {exc}")
        return 2
    if truncated and args.format != "table":  # the table says so itself
        err.print(f"[dim]stopped at --max-rows {max_rows}: the rest of the result was not fetched[/dim]")
    if args.format == "table":
        if args.output:
            with open(args.output, "w") as text:
                _render_table(table, truncated, Console(file=text, width=200))
        else:
            _render_table(table, truncated, Console())
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
