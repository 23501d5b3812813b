"""Plain PyArrow: the catalogue, a named query, and a streamed result.

Run it against a local demo server (with the project installed, e.g. by `scripts/run`):

    flight-server serve --demo            # in one terminal; listens on grpc://127.0.0.1:8815
    python clients/examples/pyarrow_example.py [grpc://127.0.0.1:8815]
"""

from __future__ import annotations

import sys

import pyarrow.compute as pc

from chrono_flight_client import ChronoFlightClient, NotFound, Options, query_command


def main(url: str) -> None:
    with ChronoFlightClient.connect(url) as client:
        print(f"server status: {client.health()['status']}")

        print("\nNamed queries:")
        for entry in client.catalog():
            params = ", ".join(p["name"] + ("" if p["required"] else f"={p.get('default')!r}") for p in entry["params"])
            print(f"  {entry['name']}({params})")
        print("Datasets:")
        for dataset in client.datasets():
            print(f"  {dataset['name']}: {dataset['rows']} rows")

        # Plan first (schema and routing, nothing runs), then run the named query.
        command = query_command("domains.top", limit=5, metric="captures")
        info = client.info(command)
        print(f"\ndomains.top runs on {info.engine} ({info.reason}); columns: {info.schema.names}")
        top = client.query("domains.top", Options(cache="bypass"), limit=5, metric="captures")
        for row in top.select(["rank", "domain", "captures"]).to_pylist():
            print(f"  {row['rank']:>2}. {row['domain']:<24} {row['captures']:>8}")

        # Streaming: batches arrive as the server produces them.
        rows = matches = batches = 0
        with client.stream_sql("SELECT domain, status_code FROM cdx_records") as stream:
            for batch in stream:
                batches += 1
                rows += batch.num_rows
                matches += pc.sum(pc.equal(batch.column("domain"), "example.com")).as_py() or 0
        print(f"\nstreamed {rows} rows in {batches} batches; example.com has {matches} captures")

        try:
            client.query("domains.topp")
        except NotFound as exc:
            print(f"\nerrors are typed: {type(exc).__name__} ({exc.status}): {exc.message}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "grpc://127.0.0.1:8815")
