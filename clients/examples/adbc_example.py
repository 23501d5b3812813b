"""Chrono Flight through the stock ADBC Flight SQL driver (DB-API 2.0).

Flight SQL support arrives with the server's Flight SQL endpoint: until the server
speaks Flight SQL, this script fails at its first statement. It needs no Chrono Flight
client package, only `pip install adbc-driver-flightsql pyarrow`. Once the endpoint
exists, run it against a local demo server:

    flight-server serve --demo            # in one terminal; listens on grpc://127.0.0.1:8815
    python clients/examples/adbc_example.py [grpc://127.0.0.1:8815]

A bearer token, when the server requires one, goes in the connect call:
`connect(url, db_kwargs={"adbc.flight.sql.authorization_header": "Bearer <token>"})`.
"""

from __future__ import annotations

import sys

import adbc_driver_flightsql.dbapi as flight_sql


def main(url: str) -> None:
    with flight_sql.connect(url) as conn, conn.cursor() as cur:
        # Plain statement, result as an Arrow table.
        cur.execute("SELECT domain, count(*) AS captures FROM cdx_records GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5")
        top = cur.fetch_arrow_table()
        print("Most archived domains:")
        for row in top.to_pylist():
            print(f"  {row['domain']:<24} {row['captures']:>8}")

        # Prepared statement with a bound parameter, rows as DB-API tuples.
        sql = "SELECT count(*), min(unix_timestamp) FROM cdx_records WHERE domain = ?"
        cur.execute(sql, ("example.com",))
        captures, first = cur.fetchone() or (0, None)
        print(f"\nexample.com: {captures} captures, first at unix time {first}")

        # Driver-level metadata, answered by Flight SQL's catalog commands.
        tables = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        names = sorted(
            table["table_name"]
            for catalog in tables
            for schema in catalog["catalog_db_schemas"] or []
            for table in schema["db_schema_tables"] or []
        )
        print(f"\ntables: {', '.join(names)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "grpc://127.0.0.1:8815")
