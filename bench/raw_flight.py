"""A minimal pyarrow Flight server, the floor for B1 profiling (not the product).

`reader` mode streams DuckDB's Arrow reader straight into `RecordBatchStream` (what any
DuckDB-backed Flight server must at least do); `table` mode materializes the result once
at start-up and only sends it (the transport alone). The ticket is `<batch rows>`.

Run: `python -m bench.raw_flight --db PATH --port N --mode reader|table`.
"""

from __future__ import annotations

import argparse
import os

import duckdb
import pyarrow as pa
import pyarrow.flight as flight

SQL = "SELECT * FROM cdx_records"


class RawServer(flight.FlightServerBase):  # type: ignore[misc]
    def __init__(self, location: str, db: str, mode: str) -> None:
        # Ready before listening: the port opens in FlightServerBase.__init__.
        self._con = duckdb.connect(db, read_only=True, config={"threads": os.cpu_count() or 1})
        self._table = self._con.sql(SQL).to_arrow_table() if mode == "table" else None
        super().__init__(location)

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.FlightDataStream:
        batch_rows = int(ticket.ticket.decode() or "131072")
        if self._table is not None:
            return flight.RecordBatchStream(pa.Table.from_batches(self._table.to_batches(batch_rows)))
        cursor = self._con.cursor()
        return flight.RecordBatchStream(cursor.sql(SQL).to_arrow_reader(batch_rows))

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> list[bytes]:
        return [b"{}"]  # any action answers: the readiness probe sends `health`


def main() -> None:
    parser = argparse.ArgumentParser(description="minimal Flight server for B1 profiling")
    parser.add_argument("--db", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["reader", "table"], default="reader")
    args = parser.parse_args()
    RawServer(f"grpc://127.0.0.1:{args.port}", args.db, args.mode).serve()


if __name__ == "__main__":
    main()
