"""Flight SQL requests, decoded by server.py, answered through the project's own paths.

Statements become the same `Command`s JSON clients send (statements.py) and are
planned by the executor, so router, cache, scoping, limits, audit and metrics apply
alike. A statement's ticket is a `TicketStatementQuery` whose handle is JSON: the
command and the query id its FlightInfo announced (or a prepared statement's handle).
DoGet authorizes the caller again and plans the command anew for that caller.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
from google.protobuf.message import Message
from sqlglot import exp

from flight_server.commands import Command, load_json, parse_command
from flight_server.context import RequestContext
from flight_server.errors import Cancelled, ChronoError, InvalidArgument
from flight_server.executor import OpenResult
from flight_server.flightsql import flight_sql_pb2 as sql
from flight_server.flightsql.browse import MetadataQueries
from flight_server.flightsql.cancel import QueryTickets
from flight_server.flightsql.deps import FlightSqlDeps
from flight_server.flightsql.ingest import ingest
from flight_server.flightsql.metadata import resolve_table
from flight_server.flightsql.prepared import BoundRun, PreparedStatement, PreparedStatements
from flight_server.flightsql.protocol import pack, unpack_body, unpack_command
from flight_server.flightsql.statements import bind_rows, parameter_schema, statement_command
from flight_server.flightsql.types import client_schema, conform_result
from flight_server.planner import Plan
from flight_server.security.middleware import require

READ_ONLY = (
    "this server is read-only for SQL statements: send queries (SELECT), "
    "and load data with bulk ingest (CommandStatementIngest)"
)
REFUSED = {
    "CommandStatementUpdate": READ_ONLY,
    "CommandPreparedStatementUpdate": READ_ONLY,
    "CommandStatementSubstraitPlan": "Substrait plans are not supported; send SQL (CommandStatementQuery)",
}


class FlightSqlService:
    def __init__(self, deps: FlightSqlDeps) -> None:
        self.deps = deps
        self.prepared = PreparedStatements(deps.settings.flightsql)
        self.tickets = QueryTickets()
        self.metadata = MetadataQueries(deps)

    # -- GetFlightInfo / GetSchema -----------------------------------------------------

    def flight_info(
        self, command: Message, descriptor: flight.FlightDescriptor, ctx: RequestContext
    ) -> tuple[flight.FlightInfo, str, dict[str, Any]]:
        """The FlightInfo of a command, its label for logs and the fields to log."""
        name = _refuse(command)
        if self.metadata.handles(command):
            schema = self.metadata.schema(command, ctx)
            endpoint = flight.FlightEndpoint(pack(command), [])
            return flight.FlightInfo(schema, descriptor, [endpoint], -1, -1), name, {}
        if isinstance(command, sql.CommandStatementQuery):
            plan = self.deps.executor.plan(self._statement(command.query, command), ctx)
            handle = {"command": json.loads(plan.command.to_json()), "query_id": plan.query_id}
        elif isinstance(command, sql.CommandPreparedStatementQuery):
            statement = self.prepared.get(ctx.caller, command.prepared_statement_handle)
            if len(statement.parameter_schema) and not statement.rows:
                raise InvalidArgument("the statement has parameters: bind their values (DoPut) before executing it")
            plan = self.deps.executor.plan(statement.commands()[0], ctx)
            handle = {"prepared": statement.handle.hex(), "query_id": plan.query_id}
        else:
            raise InvalidArgument(f"{name} is not a query; GetFlightInfo takes queries and metadata commands")
        plan, schema, cache = self.deps.executor.describe(plan, ctx)
        self.tickets.announce(plan.query_id, ctx.caller)
        ticket = pack(sql.TicketStatementQuery(statement_handle=json.dumps(handle).encode()))
        metadata = plan.metadata(cache)
        info = flight.FlightInfo(
            client_schema(schema),
            descriptor,
            [flight.FlightEndpoint(ticket, [])],
            -1,
            -1,
            app_metadata=json.dumps(metadata, separators=(",", ":")).encode(),
        )
        return info, plan.label, {"engine": plan.engine}

    def schema(self, command: Message, ctx: RequestContext) -> pa.Schema:
        name = _refuse(command)
        if self.metadata.handles(command):
            return self.metadata.schema(command, ctx)
        if isinstance(command, sql.CommandStatementQuery):
            plan = self.deps.executor.plan(self._statement(command.query, command), ctx)
            return client_schema(self.deps.executor.describe(plan, ctx).schema)
        if isinstance(command, sql.CommandPreparedStatementQuery):
            return self.prepared.get(ctx.caller, command.prepared_statement_handle).dataset_schema
        raise InvalidArgument(f"{name} has no result schema")

    def _statement(self, text: str, command: Message) -> Command:
        if command.HasField("transaction_id"):
            raise InvalidArgument("transactions are not supported: " + READ_ONLY)
        return statement_command(text, self.deps.catalog)

    # -- DoGet -------------------------------------------------------------------------

    def ticket(self, command: Message, ctx: RequestContext) -> Plan | BoundRun | pa.Table:
        """What a DoGet runs: a plan for the shared streaming path, a bound run, or a finished table."""
        if self.metadata.handles(command):
            return self.metadata.run(command, ctx)
        if not isinstance(command, sql.TicketStatementQuery):
            raise InvalidArgument(f"{command.DESCRIPTOR.name} is not a ticket; use the ticket of a FlightInfo")
        query_id, prepared, handle = _statement_ticket(command.statement_handle)
        if self.tickets.cancelled(query_id):
            raise Cancelled("the query was cancelled")
        if self.tickets.owned_by(query_id, ctx.caller) and query_id not in self.deps.running:
            ctx.query_id = query_id  # the id its FlightInfo announced, so CancelFlightInfo finds it
        if prepared is not None:
            statement = self.prepared.get(ctx.caller, prepared)
            commands = statement.commands()
            if len(commands) > 1:
                return self._run_many(commands, ctx)
            return self.deps.executor.plan(commands[0], ctx)
        if "command" not in handle:
            raise InvalidArgument(MALFORMED_TICKET)
        return self.deps.executor.plan(parse_command(json.dumps(handle["command"]).encode()), ctx)

    def _run_many(self, commands: list[Command], ctx: RequestContext) -> BoundRun:
        """A statement bound to many parameter rows: run once per row, streamed (`BoundRun`)."""
        executor = self.deps.executor
        first, described, _ = executor.describe(executor.plan(commands[0], ctx), ctx)  # remembered since its FlightInfo
        schema = client_schema(described)

        def open_row(index: int) -> OpenResult:
            plan = first if index == 0 else executor.plan(commands[index], ctx)
            return conform_result(executor.open(plan, ctx))

        slot = (
            lambda: self.deps.limits.acquire(ctx.caller, ctx.peer),
            lambda: self.deps.limits.release(ctx.caller, ctx.peer),
        )
        return BoundRun(schema, len(commands), open_row, slot)

    # -- DoPut -------------------------------------------------------------------------

    def put(
        self, command: Message, reader: flight.MetadataRecordBatchReader, ctx: RequestContext, cancelled: Any
    ) -> tuple[bytes, str, dict[str, Any]]:
        """The DoPut answer (PutResult metadata), a label and the fields to log."""
        name = _refuse(command)
        if isinstance(command, sql.CommandStatementIngest):
            require(ctx.caller, "ingest", "ingest data")
            result = ingest(self.deps, command, reader, cancelled, ctx.caller)
            answer = sql.DoPutUpdateResult(record_count=result["rows"]).SerializeToString()
            return answer, "ingest", {"dataset": command.table.lower(), "rows": result["rows"]}
        if isinstance(command, sql.CommandPreparedStatementQuery):
            statement = self.prepared.get(ctx.caller, command.prepared_statement_handle)
            rows = self._bind(statement, reader.read_all())
            answer = sql.DoPutPreparedStatementResult(prepared_statement_handle=statement.handle)
            return answer.SerializeToString(), "bind", {"rows": rows}
        raise InvalidArgument(f"{name} is not accepted by DoPut; bulk ingest takes CommandStatementIngest")

    def _bind(self, statement: PreparedStatement, table: pa.Table) -> int:
        limit = self.deps.settings.flightsql.max_bind_rows
        if table.num_rows > limit:
            raise InvalidArgument(f"bind of {table.num_rows} parameter rows; at most {limit} per execution")
        statement.rows = bind_rows(table, statement.parameter_schema)
        return len(statement.rows)

    # -- prepared statements (DoAction) ------------------------------------------------

    def create_prepared(self, body: bytes, ctx: RequestContext) -> list[bytes]:
        request = unpack_body(body, sql.ActionCreatePreparedStatementRequest)
        require(ctx.caller, "sql", "run raw SQL")
        command = self._statement(request.query, request)
        found: dict[tuple[str, str, str], pa.Schema | None] = {}  # each table looked up once per statement

        def schema_of(table: exp.Table) -> pa.Schema | None:
            name = (table.catalog, table.db, table.name)
            if name not in found:
                found[name] = self._table_schema(table, ctx)
            return found[name]

        parameters = client_schema(parameter_schema(request.query, schema_of))
        probe = command
        if len(parameters):
            nulls: list[Any] | dict[str, Any] = (
                [None] * len(parameters) if parameters.names[0].isdigit() else dict.fromkeys(parameters.names)
            )
            probe = Command(command.kind, command.target, nulls, command.engine, command.cache)
        plan = self.deps.executor.plan(probe, ctx)  # checks the statement now: bad SQL fails at prepare
        # remembered by plan, so the GetFlightInfo that follows does not describe it again
        dataset = client_schema(self.deps.executor.describe(plan, ctx).schema)
        statement = self.prepared.create(ctx.caller, command, dataset, parameters)
        result = sql.ActionCreatePreparedStatementResult(
            prepared_statement_handle=statement.handle,
            dataset_schema=dataset.serialize().to_pybytes(),
            parameter_schema=parameters.serialize().to_pybytes(),
        )
        return [pack(result)]

    def _table_schema(self, table: exp.Table, ctx: RequestContext) -> pa.Schema | None:
        """A table's schema for typing parameters; None when it cannot be found."""
        try:
            return resolve_table(self.deps, ctx, table.catalog or None, table.db or None, table.name).schema
        except ChronoError:
            return None

    def close_prepared(self, body: bytes, ctx: RequestContext) -> list[bytes]:
        request = unpack_body(body, sql.ActionClosePreparedStatementRequest)
        self.prepared.close(ctx.caller, request.prepared_statement_handle)
        return []

    # -- cancellation (DoAction) -------------------------------------------------------

    def cancel(self, info: flight.FlightInfo, ctx: RequestContext) -> bool:
        """Stop the query of a FlightInfo; False when it is none of the caller's queries."""
        found = False
        for endpoint in info.endpoints:
            query_id = _ticket_query_id(endpoint.ticket.ticket)
            if query_id is not None and self.tickets.may_cancel(query_id, ctx.caller):
                self.tickets.cancel(query_id)
                self.deps.running.cancel(query_id)
                found = True
        return found


def _refuse(command: Message) -> str:
    name: str = command.DESCRIPTOR.name
    if name in REFUSED:
        raise InvalidArgument(REFUSED[name])
    return name


MALFORMED_TICKET = "malformed statement ticket; ask GetFlightInfo for a new one"


def _statement_ticket(raw: bytes) -> tuple[str, bytes | None, dict[str, Any]]:
    """The query id, the prepared statement handle (if any) and the whole handle of a ticket.

    The handle is JSON this server wrote (see the module docstring); anything else a
    client sends in its place is INVALID_ARGUMENT, never an internal error.
    """
    handle = load_json(raw, "the statement ticket")
    if not isinstance(handle, dict) or not isinstance(handle.get("query_id"), str):
        raise InvalidArgument(MALFORMED_TICKET)
    prepared = handle.get("prepared")
    if prepared is None:
        return handle["query_id"], None, handle
    try:
        return handle["query_id"], bytes.fromhex(prepared), handle
    except (TypeError, ValueError):  # not a string, or not hexadecimal
        raise InvalidArgument(MALFORMED_TICKET) from None


def _ticket_query_id(raw: bytes) -> str | None:
    try:
        command = unpack_command(raw)
        if not isinstance(command, sql.TicketStatementQuery):
            return None
        return _statement_ticket(command.statement_handle)[0]
    except InvalidArgument:
        return None
