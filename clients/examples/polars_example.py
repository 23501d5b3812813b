"""Chrono Flight results in Polars, whole tables and batch by batch.

Run it against a local demo server (with the project installed, e.g. by `scripts/run`):

    flight-server serve --demo            # in one terminal; listens on grpc://127.0.0.1:8815
    python clients/examples/polars_example.py [grpc://127.0.0.1:8815]
"""

from __future__ import annotations

import sys

import polars as pl

from chrono_flight_client import ChronoFlightClient


def main(url: str) -> None:
    with ChronoFlightClient.connect(url) as client:
        # A whole named-query result: Arrow tables convert to Polars without copying.
        timeline = pl.from_arrow(client.query("domains.timeline", domain="example.com", interval="year"))
        assert isinstance(timeline, pl.DataFrame)
        print("example.com captures per year (busiest five):")
        print(timeline.sort("captures", descending=True).head(5))

        # Streaming: aggregate each record batch as it arrives, never holding all rows.
        partials = []
        batches = 0
        for batch in client.stream_sql("SELECT domain, content_length FROM cdx_records"):
            batches += 1
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            partials.append(frame.group_by("domain").agg(pl.len().alias("captures")))
        totals = (
            pl.concat(partials)
            .group_by("domain")
            .agg(pl.col("captures").sum())
            .sort(["captures", "domain"], descending=[True, False])
        )
        print(f"\nCaptures per domain from {batches} streamed batches (top five):")
        print(totals.head(5))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "grpc://127.0.0.1:8815")
