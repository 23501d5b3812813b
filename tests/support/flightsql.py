"""Helpers of the Flight SQL tests: ADBC connections and raw Flight SQL calls."""

from __future__ import annotations

from typing import Any

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow.flight as flight
from google.protobuf.message import Message

from flight_server.flightsql.protocol import pack

from support.servers import ServerHandle


def connect(handle: ServerHandle, **db_kwargs: str) -> Any:
    """An ADBC Flight SQL DB-API connection to the test server (autocommit: no transactions)."""
    return flightsql.connect(handle.location, db_kwargs=db_kwargs or None, autocommit=True)


def descriptor(message: Message) -> flight.FlightDescriptor:
    return flight.FlightDescriptor.for_command(pack(message))


def action(
    client: flight.FlightClient, name: str, body: bytes, options: flight.FlightCallOptions | None = None
) -> list[bytes]:
    return [r.body.to_pybytes() for r in client.do_action(flight.Action(name, body), options=options)]
