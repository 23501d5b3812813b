"""Chrono Flight results as pandas DataFrames.

Run it against a local demo server (with the project installed, e.g. by `scripts/run`):

    flight-server serve --demo            # in one terminal; listens on grpc://127.0.0.1:8815
    python clients/examples/pandas_example.py [grpc://127.0.0.1:8815]
"""

from __future__ import annotations

import sys

import pandas as pd

from chrono_flight_client import ChronoFlightClient


def main(url: str) -> None:
    with ChronoFlightClient.connect(url) as client:
        # A named query: the ten most archived domains, straight into a DataFrame.
        top: pd.DataFrame = client.query("domains.top", limit=10).to_pandas()
        print("Most archived domains:")
        print(top[["rank", "domain", "captures", "unique_urls"]].to_string(index=False))

        # Raw SQL with a bound parameter ($1); Arrow types map to pandas dtypes.
        busiest = str(top["domain"].iloc[0])
        statuses = client.sql(
            "SELECT status_code, count(*) AS captures FROM cdx_records WHERE domain = $1 GROUP BY 1 ORDER BY 2 DESC, 1",
            busiest,
        ).to_pandas()
        print(f"\nHTTP status codes of {busiest}:")
        print(statuses.to_string(index=False))
        meta = client.last_metadata
        print(f"\ncache: {meta.get('cache')}, query_id: {meta.get('query_id')}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "grpc://127.0.0.1:8815")
