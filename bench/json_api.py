"""The B2 baseline: an HTTP JSON API in the shape of the old analytics API.

Starlette on uvicorn, one worker with one DuckDB connection (a cursor per request),
no debug, no access log. `GET /api/v1/cdx/records?limit=N` answers a JSON array of
records (`[{"id": ..., "domain": ..., ...}, ...]`), streamed one Arrow record batch at a
time so that DuckDB, serialization and the socket overlap. Two serializers:

- `orjson` (default): column-wise fast path; each column becomes a Python list in one
  call (timestamps as ISO 8601 strings, converted by Arrow in C++), rows are zipped into
  dicts and serialized by orjson. Same JSON as `orjson.dumps(table.to_pylist())` except
  that timestamps always carry microseconds, and much faster (`to_pylist()` builds a
  dict per row and a `datetime` per timestamp in Python).
- `polars`: `polars.DataFrame.write_json()` of each batch (Rust, row-oriented output).
- `pylist`: the plain `orjson.dumps(batch.to_pylist())`, for reference.

Run: `python -m bench.json_api --db PATH --port N [--threads T]`.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

BATCH_ROWS = 131_072
MAX_LIMIT = 10_000_000


def _column_values(column: pa.Array) -> list[Any]:
    if pa.types.is_timestamp(column.type) and column.type.tz is None:
        text = pc.replace_substring(column.cast(pa.string()), " ", "T", max_replacements=1)
        return text.to_pylist()  # type: ignore[no-any-return]
    return column.to_pylist()  # type: ignore[no-any-return]


def orjson_records(batch: pa.RecordBatch) -> bytes:
    names = batch.schema.names
    columns = [_column_values(column) for column in batch.columns]
    return orjson.dumps([dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)])


def polars_records(batch: pa.RecordBatch) -> bytes:
    import polars as pl

    frame = pl.from_arrow(batch)
    assert isinstance(frame, pl.DataFrame)
    return frame.write_json().encode()


def pylist_records(batch: pa.RecordBatch) -> bytes:
    """The plain way: `orjson.dumps(batch.to_pylist())`."""
    return orjson.dumps(batch.to_pylist())


SERIALIZERS: dict[str, Callable[[pa.RecordBatch], bytes]] = {
    "orjson": orjson_records,
    "polars": polars_records,
    "pylist": pylist_records,
}


def json_array(reader: pa.RecordBatchReader, serialize: Callable[[pa.RecordBatch], bytes]) -> Iterator[bytes]:
    """One JSON array, written batch by batch (each batch's array without its brackets)."""
    yield b"["
    first = True
    for batch in reader:
        if batch.num_rows == 0:
            continue
        body = serialize(batch)[1:-1]
        yield body if first else b"," + body
        first = False
    yield b"]"


def create_app(db_path: str, threads: int) -> Starlette:
    state: dict[str, duckdb.DuckDBPyConnection] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["con"] = duckdb.connect(db_path, read_only=True, config={"threads": threads})
        yield
        state.pop("con").close()

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def cdx_records(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "1000"))
        except ValueError:
            return JSONResponse({"detail": "limit must be an integer"}, status_code=400)
        if not 0 <= limit <= MAX_LIMIT:
            return JSONResponse({"detail": f"limit must be 0..{MAX_LIMIT}"}, status_code=400)
        serialize = SERIALIZERS.get(request.query_params.get("serializer", "orjson"))
        if serialize is None:
            return JSONResponse({"detail": f"serializer: one of {', '.join(SERIALIZERS)}"}, status_code=400)
        cursor = state["con"].cursor()
        reader = cursor.sql("SELECT * FROM cdx_records LIMIT $limit", params={"limit": limit})
        arrow = reader.to_arrow_reader(BATCH_ROWS)

        def body() -> Iterator[bytes]:
            try:
                yield from json_array(arrow, serialize)
            finally:
                cursor.close()

        # A sync iterator: Starlette runs it in its thread pool, off the event loop.
        return StreamingResponse(body(), media_type="application/json")

    return Starlette(
        debug=False,
        routes=[Route("/health", health), Route("/api/v1/cdx/records", cdx_records)],
        lifespan=lifespan,
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.db, args.threads),
        host="127.0.0.1",
        port=args.port,
        workers=1,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
