"""`flight-server ingest DATASET FILE`: stream a Parquet, CSV or Arrow IPC file through DoPut.

The file is read batch by batch and each batch is sent as it is read, so files larger
than memory go through; progress is drawn in rows (Parquet), batches (Arrow IPC file) or
bytes read (CSV, Arrow IPC stream).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.console import Console

from chrono_flight_client import ChronoFlightClient, ChronoFlightError, NotFound
from flight_server.settings import Settings

Progress = Callable[[str, int, int], None]
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".arrow": "arrow", ".arrows": "arrow"}
_FORMATS |= {".ipc": "arrow", ".feather": "arrow"}


def file_format(path: Path, requested: str) -> str:
    if requested != "auto":
        return requested
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SystemExit(f"flight-server ingest: cannot tell the format of '{path.name}'; give --format")
    return fmt


def read_batches(
    path: Path, fmt: str, batch_rows: int, progress: Progress, csv_types: dict[str, pa.DataType] | None = None
) -> pa.RecordBatchReader:
    """A reader over the file's batches that reports progress as they are read.

    CSV has no types: `csv_types` (the dataset's, when it exists) are used for the
    columns it names, the rest are inferred.
    """
    step = f"sending {path.name}"[:22]
    if fmt == "parquet":
        parquet = pq.ParquetFile(path)
        total = parquet.metadata.num_rows

        def parquet_batches() -> Iterator[pa.RecordBatch]:
            done = 0
            progress(step, 0, total)
            for batch in parquet.iter_batches(batch_size=batch_rows):
                done += batch.num_rows
                yield batch
                progress(step, done, total)

        return pa.RecordBatchReader.from_batches(parquet.schema_arrow, parquet_batches())
    source = pa.OSFile(str(path), "rb")
    size = path.stat().st_size
    if fmt == "arrow":
        try:
            ipc_file = pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            source.seek(0)  # not the file format: the stream format, read as it goes
        else:
            batches = ipc_file.num_record_batches

            def file_batches() -> Iterator[pa.RecordBatch]:
                progress(step, 0, batches)
                for i in range(batches):
                    yield ipc_file.get_batch(i)
                    progress(step, i + 1, batches)

            return pa.RecordBatchReader.from_batches(ipc_file.schema, file_batches())
        reader: pa.RecordBatchReader = pa.ipc.open_stream(source)
    else:
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(block_size=1 << 20),
            convert_options=pacsv.ConvertOptions(column_types=csv_types or {}),
        )

    def stream_batches() -> Iterator[pa.RecordBatch]:
        progress(step, 0, size)
        for batch in reader:
            yield batch
            progress(step, source.tell(), size)
        progress(step, size, size)

    return pa.RecordBatchReader.from_batches(reader.schema, stream_batches())


def run_ingest(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    path = Path(args.file)
    err = Console(stderr=True)
    if not path.is_file():
        err.print(f"flight-server ingest: no such file '{path}'")
        return 1
    url = args.url or f"grpc://{settings.host}:{settings.port}"
    fmt = file_format(path, args.format)
    try:
        with ChronoFlightClient.connect(url, token=args.token) as client:
            csv_types = None
            if fmt == "csv":
                with suppress(NotFound):  # a new dataset: its types are what the CSV reader infers
                    csv_types = {f.name: f.type for f in client.schema({"dataset": args.dataset})}
            try:
                result = client.ingest(args.dataset, read_batches(path, fmt, args.batch_rows, progress, csv_types))
            except (pa.ArrowException, OSError) as exc:  # the file, not the server: nothing was stored
                err.print(f"flight-server ingest: cannot read '{path.name}': {str(exc).splitlines()[0]}")
                return 1
    except ChronoFlightError as exc:
        err.print(f"[red]{exc.status}[/red]: {exc}")
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    err.print(f"{result['rows']:,} rows into {args.dataset} ({len(result['files'])} files, {result['bytes']:,} bytes)")
    return 0
