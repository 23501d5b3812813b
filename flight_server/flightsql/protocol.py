"""Flight SQL on the wire: commands and action bodies packed in `google.protobuf.Any`.

A descriptor command or ticket is Flight SQL when it parses as an `Any` whose type URL
names a message of the `arrow.flight.protocol.sql` package; anything else is left to
the JSON command decoder, so both protocols share one port.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from flight_server.errors import InvalidArgument
from flight_server.flightsql import flight_sql_pb2 as sql

M = TypeVar("M", bound=Message)

TYPE_PREFIX = "type.googleapis.com/arrow.flight.protocol.sql."

# every message a client may send as a descriptor command or a ticket, by name
COMMANDS: dict[str, type[Message]] = {
    cls.DESCRIPTOR.name: cls
    for cls in (
        sql.CommandStatementQuery,
        sql.CommandStatementUpdate,
        sql.CommandStatementSubstraitPlan,
        sql.CommandStatementIngest,
        sql.CommandPreparedStatementQuery,
        sql.CommandPreparedStatementUpdate,
        sql.TicketStatementQuery,
        sql.CommandGetCatalogs,
        sql.CommandGetDbSchemas,
        sql.CommandGetTables,
        sql.CommandGetTableTypes,
        sql.CommandGetSqlInfo,
        sql.CommandGetXdbcTypeInfo,
        sql.CommandGetPrimaryKeys,
        sql.CommandGetExportedKeys,
        sql.CommandGetImportedKeys,
        sql.CommandGetCrossReference,
    )
}


def pack(message: Message) -> bytes:
    """The message wrapped in an `Any`, serialized."""
    wrapper = any_pb2.Any()
    wrapper.Pack(message)
    data: bytes = wrapper.SerializeToString()
    return data


def unpack_command(raw: bytes) -> Message | None:
    """The Flight SQL command in `raw`, or None when `raw` is not Flight SQL (JSON, say)."""
    if not raw or raw[:1] in (b"{", b"[", b" "):
        return None
    wrapper = any_pb2.Any()
    try:
        wrapper.ParseFromString(raw)
    except DecodeError:
        return None
    if not wrapper.type_url.startswith(TYPE_PREFIX):
        return None
    name = wrapper.type_url[len(TYPE_PREFIX) :]
    cls = COMMANDS.get(name)
    if cls is None:
        raise InvalidArgument(f"Flight SQL command {name[:60]} is not supported by this server")
    return _parse(cls, wrapper.value, name)


def unpack_body(raw: bytes, cls: type[M]) -> M:
    """An action body: the `Any`-wrapped request message of type `cls`."""
    wrapper = any_pb2.Any()
    try:
        wrapper.ParseFromString(raw)
    except DecodeError:
        raise InvalidArgument(f"action body must be a google.protobuf.Any holding {cls.DESCRIPTOR.name}") from None
    if wrapper.type_url != TYPE_PREFIX + cls.DESCRIPTOR.name:
        raise InvalidArgument(f"action body must hold {cls.DESCRIPTOR.name}, not '{wrapper.type_url[:80]}'")
    return _parse(cls, wrapper.value, cls.DESCRIPTOR.name)


def parse_plain(raw: bytes, cls: type[M]) -> M:
    """A message sent without an `Any` around it (the Flight cancel action)."""
    return _parse(cls, raw, cls.DESCRIPTOR.name)


def _parse(cls: type[M], raw: bytes, name: str) -> M:
    message: M = cls()
    try:
        message.ParseFromString(raw)
    except DecodeError:
        raise InvalidArgument(f"malformed Flight SQL message {name}") from None
    return message
