"""Dispatch of the ten Flight SQL metadata commands to metadata.py.

GetFlightInfo answers with the command's result schema and one endpoint whose ticket
is the command itself; GetSchema with the schema; DoGet runs the metadata function for
the caller. Optional protobuf fields that are unset reach the functions as None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
from google.protobuf.message import Message

from flight_server.context import RequestContext
from flight_server.flightsql import flight_sql_pb2 as sql
from flight_server.flightsql import metadata
from flight_server.flightsql.deps import FlightSqlDeps
from flight_server.security.middleware import require


def _optional(message: Message, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def _args(*names: str) -> Callable[[Any], list[Any]]:
    """Arguments of a metadata function: the command's fields, optional ones as None."""

    def extract(command: Any) -> list[Any]:
        out = []
        for name in names:
            field = command.DESCRIPTOR.fields_by_name[name]
            out.append(_optional(command, name) if field.has_presence else getattr(command, name))
        return out

    return extract


Arguments = Callable[[Any], list[Any]]
_KEY_ARGS = _args("catalog", "db_schema", "table")

# command -> (run function, schema function, arguments of the run function, of the schema function)
_DISPATCH: dict[type[Message], tuple[Callable[..., pa.Table], Callable[..., pa.Schema], Arguments, Arguments]] = {
    sql.CommandGetCatalogs: (metadata.get_catalogs, metadata.catalogs_schema, _args(), _args()),
    sql.CommandGetDbSchemas: (
        metadata.get_db_schemas,
        metadata.db_schemas_schema,
        _args("catalog", "db_schema_filter_pattern"),
        _args(),
    ),
    sql.CommandGetTables: (
        metadata.get_tables,
        metadata.tables_schema,
        lambda c: [
            _optional(c, "catalog"),
            _optional(c, "db_schema_filter_pattern"),
            _optional(c, "table_name_filter_pattern"),
            list(c.table_types),
            c.include_schema,
        ],
        lambda c: [c.include_schema],
    ),
    sql.CommandGetTableTypes: (metadata.get_table_types, metadata.table_types_schema, _args(), _args()),
    sql.CommandGetSqlInfo: (metadata.get_sql_info, metadata.sql_info_schema, lambda c: [list(c.info)], _args()),
    sql.CommandGetXdbcTypeInfo: (
        metadata.get_xdbc_type_info,
        metadata.xdbc_type_info_schema,
        _args("data_type"),
        _args(),
    ),
    sql.CommandGetPrimaryKeys: (metadata.get_primary_keys, metadata.primary_keys_schema, _KEY_ARGS, _args()),
    sql.CommandGetExportedKeys: (metadata.get_exported_keys, metadata.foreign_keys_schema, _KEY_ARGS, _args()),
    sql.CommandGetImportedKeys: (metadata.get_imported_keys, metadata.foreign_keys_schema, _KEY_ARGS, _args()),
    sql.CommandGetCrossReference: (
        metadata.get_cross_reference,
        metadata.foreign_keys_schema,
        _args("pk_catalog", "pk_db_schema", "pk_table", "fk_catalog", "fk_db_schema", "fk_table"),
        _args(),
    ),
}


class MetadataQueries:
    def __init__(self, deps: FlightSqlDeps) -> None:
        self.deps = deps

    def handles(self, command: Message) -> bool:
        return type(command) in _DISPATCH

    def schema(self, command: Message, ctx: RequestContext) -> pa.Schema:
        require(ctx.caller, "metadata", "browse metadata")
        _, schema_of, _, schema_args = _DISPATCH[type(command)]
        return schema_of(*schema_args(command))

    def run(self, command: Message, ctx: RequestContext) -> pa.Table:
        require(ctx.caller, "metadata", "browse metadata")
        run, _, run_args, _ = _DISPATCH[type(command)]
        return run(self.deps, ctx, *run_args(command))
