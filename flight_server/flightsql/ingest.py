"""Bulk ingest (`CommandStatementIngest`) through the server's ingestion path.

The target table is a dataset (`duckdb.main.<table>`; catalog and schema may be left
out). The table definition options decide what happens:

| table | `if_not_exist` / `if_exists` | result |
|---|---|---|
| missing | CREATE | a new dataset with the stream's schema |
| missing | FAIL | NOT_FOUND |
| present | FAIL | INVALID_ARGUMENT (already exists) |
| present | APPEND | the rows are added (types must match or widen, as for any put) |
| present | REPLACE | files and schema replaced in one commit (not for the analytics tables) |

Every case is one put: written, fsynced and committed by the dataset manifest, so a
failed or cancelled ingest leaves nothing visible. It is scoped as any put
(ingest/write_scope.py): a non-admin caller appends rows of its own projects only, and may
neither add columns to an existing table nor replace it. Temporary tables and
transactions are refused: the server keeps no sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flight_server.context import Caller
from flight_server.errors import InvalidArgument, NotFound
from flight_server.flightsql import flight_sql_pb2 as sql
from flight_server.flightsql.deps import FlightSqlDeps
from flight_server.flightsql.statements import ENGINE_SCHEMAS
from flight_server.ingest.datasets import check_dataset_name

_Options = sql.CommandStatementIngest.TableDefinitionOptions


def ingest(
    deps: FlightSqlDeps, command: sql.CommandStatementIngest, reader: Any, cancelled: Callable[[], bool], caller: Caller
) -> dict[str, Any]:
    """Run the ingest for `caller`, scoped as any put; the put result ({"rows", "files", "bytes"})."""
    if command.temporary:
        raise InvalidArgument("temporary tables are not supported: ingest into a named table (a dataset)")
    if command.HasField("transaction_id"):
        raise InvalidArgument("transactions are not supported: each ingest commits on its own")
    if command.HasField("catalog") and command.catalog.lower() not in ("", "duckdb"):
        raise InvalidArgument("ingest lands in the duckdb catalog (Parquet datasets); leave the catalog out")
    if command.HasField("schema") and command.schema.lower() not in ("", ENGINE_SCHEMAS["duckdb"]):
        raise InvalidArgument("ingest lands in schema main; leave the schema out")
    name = check_dataset_name(command.table.lower())
    options = command.table_definition_options
    exists = deps.datasets.get(name) is not None
    if not exists:
        if options.if_not_exist != _Options.TABLE_NOT_EXIST_OPTION_CREATE:
            raise NotFound(f"table '{name}' does not exist; ingest with mode create to create it")
        return deps.ingest.put(name, reader, cancelled, caller=caller)
    if options.if_exists == _Options.TABLE_EXISTS_OPTION_APPEND:
        return deps.ingest.put(name, reader, cancelled, caller=caller)
    if options.if_exists == _Options.TABLE_EXISTS_OPTION_REPLACE:
        return deps.ingest.put(name, reader, cancelled, caller=caller, replace=True)
    raise InvalidArgument(f"table '{name}' already exists; ingest with mode append or replace")
