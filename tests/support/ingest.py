"""Ingest helpers: CDX rows to put, a plain DoPut, and a count that bypasses the cache."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from support.servers import ServerHandle

MAY_2024 = 1_714_521_600  # 2024-05-01T00:00:00Z


def cdx_rows(domain: str, n: int, start: int = MAY_2024, step: int = 86_400) -> pa.Table:
    """CDX captures of one domain, one a `step` seconds apart from `start`."""
    return pa.table(
        {
            "id": [f"{domain}-{i}" for i in range(n)],
            "domain": [domain] * n,
            "original_url": [f"https://{domain}/page-{i}" for i in range(n)],
            "unix_timestamp": pa.array([start + i * step for i in range(n)], pa.int64()),
            "status_code": pa.array([200 if i % 4 else 404 for i in range(n)], pa.int32()),
        }
    )


def put(handle: ServerHandle, dataset: str, data: pa.Table, chunk: int | None = None) -> dict[str, Any]:
    """A plain pyarrow.flight DoPut; the put result sent back as metadata."""
    writer, acks = handle.client.do_put(flight.FlightDescriptor.for_path(dataset), data.schema)
    writer.write_table(data, max_chunksize=chunk)
    writer.done_writing()
    ack = acks.read()
    writer.close()
    assert ack is not None
    result: dict[str, Any] = json.loads(ack.to_pybytes())
    return result


def count(handle: ServerHandle, sql: str, *params: Any) -> int:
    table = handle.get({"sql": sql, "params": list(params), "cache": "bypass"})
    return int(table.column(0)[0].as_py())
