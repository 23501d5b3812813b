"""The Flight RPC surface: decodes requests and hands them to the executor.

Every handler runs inside `_rpc`, which builds the request context, logs one line per
request and turns any failure into the right Flight status with a one-line message.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import pyarrow as pa
import pyarrow.flight as flight

from flight_server.actions import ACTIONS, ActionDeps, RequestCounts
from flight_server.commands import Command, dataset_command, parse_command
from flight_server.context import Caller, RequestContext
from flight_server.errors import ChronoError, InvalidArgument, NotFound, ResourceExhausted, to_flight_error
from flight_server.executor import OpenResult
from flight_server.flightsql.actions import SQL_ACTIONS
from flight_server.flightsql.deps import FlightSqlDeps
from flight_server.flightsql.prepared import BoundRun
from flight_server.flightsql.protocol import unpack_command
from flight_server.flightsql.service import FlightSqlService
from flight_server.flightsql.types import conform_result
from flight_server.ops.live import parse_subscription
from flight_server.ops.metrics import Metrics
from flight_server.planner import Plan
from flight_server.security.audit import AuditLog
from flight_server.security.auth import Authenticator
from flight_server.security.middleware import (
    HeaderAuthHandler,
    caller_of,
    check_bind_address,
    require,
    server_middleware,
    tls_options,
)
from flight_server.settings import Settings
from flight_server.streaming import WatchedStream, bounded_batches, bounded_table

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _metadata_bytes(metadata: dict[str, Any]) -> bytes:
    return json.dumps(metadata, separators=(",", ":")).encode()


class RequestLog(RequestCounts, Protocol):
    """Counters of requests by RPC and by outcome, fed one request at a time."""

    def record(self, rpc: str, status: str) -> None: ...


class ServerDeps(ActionDeps, FlightSqlDeps, Protocol):
    """The server's parts the RPC surface uses, on top of those the actions and Flight SQL use.

    The composition root satisfies it structurally, so this module never imports it;
    members are read-only.
    """

    @property
    def auth(self) -> Authenticator: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def stats(self) -> RequestLog: ...


class ChronoFlightServer(flight.FlightServerBase):  # type: ignore[misc]
    def __init__(self, deps: ServerDeps, location: str | None = None, **kwargs: Any) -> None:
        # pyarrow sends the formatted traceback of an exception along with its status;
        # with no frames in it, clients get the one-line message only. Logs format
        # tracebacks with their own explicit limit.
        sys.tracebacklimit = 0
        settings = deps.settings
        check_bind_address(settings)
        tls = tls_options(settings)
        scheme = "grpc+tls" if tls else "grpc"
        kwargs["middleware"] = server_middleware(deps.auth, deps.lifecycle.middleware(), kwargs.get("middleware"))
        kwargs.setdefault("auth_handler", HeaderAuthHandler())
        super().__init__(location or f"{scheme}://{settings.host}:{settings.port}", **tls, **kwargs)
        self.deps = deps
        self.sql = FlightSqlService(deps)

    # -- plumbing --------------------------------------------------------------------

    def _rpc(
        self, rpc: str, call_ctx: flight.ServerCallContext, label: str, handler: Callable[[RequestContext], T]
    ) -> T:
        ctx = RequestContext(rpc=rpc, peer=call_ctx.peer() if call_ctx else "")
        try:
            ctx.caller = caller = caller_of(call_ctx)
            ctx.deadline_s = self.deps.limits.deadline_s(caller, self.deps.settings.duckdb.query_deadline_s)
            self.deps.limits.admit(caller)
            result = handler(ctx)
        except BaseException as exc:  # noqa: BLE001 - the RPC boundary: every failure becomes a Flight status
            status = exc.status if isinstance(exc, ChronoError) else "internal"
            self._log(ctx, label, status, error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise to_flight_error(exc) from None
        return result

    def _log(self, ctx: RequestContext, label: str, status: str, **fields: Any) -> None:
        self.deps.stats.record(ctx.rpc, status)
        self.deps.metrics.observe_request(ctx.rpc, label, status, ctx.elapsed_ms() / 1000.0, fields)
        self.deps.audit.record(
            {
                "subject": ctx.caller.subject,
                "role": ctx.caller.role,
                "rpc": ctx.rpc,
                "action": label,
                "sql_fingerprint": ctx.sql_fingerprint,
                "status": status,
                "ms": round(ctx.elapsed_ms(), 3),
                "query_id": ctx.query_id,
                **{k: v for k, v in fields.items() if k in ("rows", "bytes", "engine", "cache")},
            }
        )
        logger.info(
            "request",
            extra={
                "fields": {
                    "rpc": ctx.rpc,
                    "query_id": ctx.query_id,
                    "route": label,
                    "status": status,
                    "ms": round(ctx.elapsed_ms(), 3),
                    **fields,
                }
            },
        )

    @staticmethod
    def _sql_command(descriptor: flight.FlightDescriptor) -> Any:
        """The Flight SQL command of a descriptor; None for JSON commands and paths."""
        if descriptor.descriptor_type != flight.DescriptorType.CMD:
            return None
        return unpack_command(descriptor.command)

    def _command(self, descriptor: flight.FlightDescriptor) -> Command:
        if descriptor.descriptor_type == flight.DescriptorType.CMD:
            return parse_command(descriptor.command)
        if descriptor.descriptor_type == flight.DescriptorType.PATH:
            return dataset_command(descriptor.path)
        raise InvalidArgument("descriptor must be a JSON command or a dataset path")

    # -- RPCs --------------------------------------------------------------------------

    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        def handle(ctx: RequestContext) -> flight.FlightInfo:
            sql_command = self._sql_command(descriptor)
            if sql_command is not None:
                info, label, fields = self.sql.flight_info(sql_command, descriptor, ctx)
                self._log(ctx, label, "ok", **fields)
                return info
            command = self._command(descriptor)
            plan = self.deps.executor.plan(command, ctx)
            plan, schema, cache = self.deps.executor.describe(plan, ctx)
            ticket = flight.Ticket(plan.command.to_json())
            metadata = plan.metadata(cache)
            self._log(ctx, plan.label, "ok", engine=plan.engine)
            return flight.FlightInfo(
                schema,
                descriptor,
                [flight.FlightEndpoint(ticket, [])],
                -1,
                -1,
                app_metadata=_metadata_bytes(metadata),
            )

        return self._rpc("GetFlightInfo", context, "info", handle)

    def get_schema(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor) -> flight.SchemaResult:
        def handle(ctx: RequestContext) -> flight.SchemaResult:
            sql_command = self._sql_command(descriptor)
            if sql_command is not None:
                result = flight.SchemaResult(self.sql.schema(sql_command, ctx))
                self._log(ctx, sql_command.DESCRIPTOR.name, "ok")
                return result
            plan = self.deps.executor.plan(self._command(descriptor), ctx)
            plan, schema, _ = self.deps.executor.describe(plan, ctx)
            self._log(ctx, plan.label, "ok", engine=plan.engine)
            return flight.SchemaResult(schema)

        return self._rpc("GetSchema", context, "schema", handle)

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.FlightDataStream:
        def handle(ctx: RequestContext) -> flight.FlightDataStream:
            sql_command = unpack_command(ticket.ticket)
            if sql_command is None:
                return self._serve(context, ctx, self.deps.executor.plan(parse_command(ticket.ticket), ctx))
            target = self.sql.ticket(sql_command, ctx)
            if isinstance(target, Plan):
                return self._serve(context, ctx, target, client_types=True)
            if isinstance(target, BoundRun):
                return self._stream_bound(ctx, target)
            budget = _Budget.for_caller(ctx.caller, self.deps.settings)
            for batch in target.to_batches():
                budget.spend(batch)
            self._log(ctx, sql_command.DESCRIPTOR.name, "ok", rows=target.num_rows, bytes=target.nbytes)
            return flight.RecordBatchStream(bounded_table(target, self.deps.settings.max_message_bytes))

        return self._rpc("DoGet", context, "get", handle)

    def _serve(
        self, context: flight.ServerCallContext, ctx: RequestContext, plan: Plan, client_types: bool = False
    ) -> flight.FlightDataStream:
        """Open a plan's result (a client that goes away meanwhile stops it) and stream it."""
        self.deps.limits.acquire(ctx.caller, ctx.peer)
        self.deps.running.watch_client(plan.query_id, context.is_cancelled)
        try:
            result = self.deps.executor.open(plan, ctx)
        except BaseException:
            self.deps.limits.release(ctx.caller, ctx.peer)
            raise
        finally:
            self.deps.running.unwatch_client(plan.query_id)
        if client_types:
            result = conform_result(result)
        context.add_header("x-chrono-cache", result.cache)
        context.add_header("x-chrono-query-id", plan.query_id)

        def end() -> None:  # once: when the stream ends, or when its client stopped reading
            try:
                result.batches.clear()
                result.close()
            finally:
                self.deps.limits.release(ctx.caller, ctx.peer)

        watched = self.deps.limits.stalls.watch(end, plan.query_id)
        fields = {"engine": result.plan.engine, "cache": result.cache}
        stream = self._stream(ctx, result.plan.label, fields, watched, lambda sent: self._batches(ctx, result, sent))
        return flight.GeneratorStream(result.schema, stream)

    def _stream_bound(self, ctx: RequestContext, run: BoundRun) -> flight.FlightDataStream:
        """A prepared statement bound to many rows, streamed row by row and watched for stalls
        like any other stream (`run.stop` ends it from outside)."""
        watched = self.deps.limits.stalls.watch(run.stop, ctx.query_id)
        fields = {"parameter_rows": run.rows}
        stream = self._stream(ctx, "prepared.rows", fields, watched, lambda sent: self._bound_batches(ctx, run, sent))
        return flight.GeneratorStream(run.schema, stream)

    def _stream(
        self,
        ctx: RequestContext,
        label: str,
        fields: dict[str, Any],
        watched: WatchedStream,
        batches: Callable[[dict[str, int]], Iterator[Any]],
    ) -> Iterator[Any]:
        """The batches, each watched while the writer holds it (flight_server.streaming); one log line at the end.

        The query's resources and slot go when the stream ends, or as soon as its client
        has stopped reading for the stall timeout. Every batch is cut to the message bound
        (`bounded_batches`: zero-copy slices, flight_server.streaming), so that no message
        exceeds `FLIGHT_MAX_MESSAGE_BYTES`.
        """
        status = "cancelled"
        sent = {"rows": 0, "bytes": 0}
        try:
            yield from watched.items(batches(sent))
            status = "ok"
        except ChronoError as exc:
            status = exc.status
            raise to_flight_error(exc) from None
        finally:
            self._log(ctx, label, status, **fields, **sent)

    def _bound_batches(self, ctx: RequestContext, run: BoundRun, sent: dict[str, int]) -> Iterator[pa.RecordBatch]:
        """The run's batches, held to the caller's result budget, each cut to the message bound.

        The budget is spent on each batch as it is produced: the run stops with
        RESOURCE_EXHAUSTED at the first batch past it, before any further row runs.
        """
        budget = _Budget.for_caller(ctx.caller, self.deps.settings)
        batches = run.batches()
        try:
            for batch in batches:
                budget.spend(batch)
                sent["rows"] += batch.num_rows
                sent["bytes"] += batch.nbytes
                yield from bounded_batches([batch], self.deps.settings.max_message_bytes)
        finally:
            batches.close()

    def _batches(self, ctx: RequestContext, result: OpenResult, sent: dict[str, int]) -> Iterator[Any]:
        """First batch with the metadata, then the rest, each cut to the message bound, counted into `sent`.

        Non-admin results are held to the row and byte limits: batches in hand are
        counted before anything is sent, and a live reader batch by batch. Batches in
        hand are dropped as they are handed on.
        """
        metadata = pa.py_buffer(_metadata_bytes(result.metadata()))
        budget = _Budget.for_caller(ctx.caller, self.deps.settings)
        bound = self.deps.settings.max_message_bytes
        for batch in result.batches:
            budget.spend(batch)
        held = result.batches
        first = True
        while held:
            batch = held.pop(0)
            sent["rows"] += batch.num_rows
            sent["bytes"] += batch.nbytes
            for piece in bounded_batches([batch], bound):
                yield (piece, metadata) if first else piece
                first = False
        if first:
            yield _empty_batch(result.schema), metadata
        if result.running is None:
            return
        for batch in result.running.batches():
            budget.spend(batch)
            sent["rows"] += batch.num_rows
            sent["bytes"] += batch.nbytes
            yield from bounded_batches([batch], bound)

    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        def handle(ctx: RequestContext) -> None:
            sql_command = self._sql_command(descriptor)
            if sql_command is not None:
                answer, label, fields = self.sql.put(sql_command, reader, ctx, context.is_cancelled)
                writer.write(pa.py_buffer(answer))
                self._log(ctx, label, "ok", **fields)
                return
            if descriptor.descriptor_type != flight.DescriptorType.PATH or len(descriptor.path) != 1:
                raise InvalidArgument("DoPut takes FlightDescriptor.for_path(dataset), e.g. for_path('cdx_records')")
            require(ctx.caller, "ingest", "ingest data")
            result = self.deps.ingest.put(descriptor.path[0], reader, context.is_cancelled, caller=ctx.caller)
            writer.write(pa.py_buffer(_metadata_bytes(result)))
            self._log(
                ctx,
                "put",
                "ok",
                dataset=descriptor.path[0].decode(errors="replace").lower(),
                rows=result["rows"],
                files=len(result["files"]),
                bytes=result["bytes"],
            )

        self._rpc("DoPut", context, "put", handle)

    def list_flights(self, context: flight.ServerCallContext, criteria: bytes) -> Iterator[flight.FlightInfo]:
        def handle(ctx: RequestContext) -> list[flight.FlightInfo]:
            infos = []
            for query in self.deps.catalog:
                descriptor = flight.FlightDescriptor.for_command(json.dumps({"query": query.name}).encode())
                metadata = {"kind": "query", **query.describe()}
                infos.append(
                    flight.FlightInfo(
                        self.deps.executor.named_schema(query.name),
                        descriptor,
                        [],
                        -1,
                        -1,
                        app_metadata=_metadata_bytes(metadata),
                    )
                )
            counts = self.deps.duckdb.row_counts()
            for name, engine in sorted(self.deps.registry.tables().items()):
                schema = self.deps.engines[engine].schema(f'SELECT * FROM "{name}"', None)
                secret = self.deps.access.secret.get(name, frozenset())  # never shown (flight_server.security.access)
                schema = pa.schema([f for f in schema if f.name not in secret], metadata=schema.metadata)
                ticket = flight.Ticket(json.dumps({"dataset": name}).encode())
                metadata = {"kind": "dataset", "name": name, "engine": engine, "rows": counts.get(name)}
                infos.append(
                    flight.FlightInfo(
                        schema,
                        flight.FlightDescriptor.for_path(name),
                        [flight.FlightEndpoint(ticket, [])],
                        counts.get(name, -1),
                        -1,
                        app_metadata=_metadata_bytes(metadata),
                    )
                )
            self._log(ctx, "catalog", "ok", flights=len(infos))
            return infos

        return iter(self._rpc("ListFlights", context, "catalog", handle))

    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        def handle(ctx: RequestContext) -> None:
            require(ctx.caller, "metadata", "subscribe to live metrics")
            interval_s = parse_subscription(descriptor)
            sent = self.deps.live.stream(interval_s, reader, writer, context.is_cancelled)
            self._log(ctx, "live", "ok", batches=sent)

        self._rpc("DoExchange", context, "live", handle)

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        try:
            caller_of(context)  # basic credentials sent on this call are checked as on any other
        except ChronoError as exc:
            raise to_flight_error(exc) from None
        listed = [(spec.name, spec.description) for spec in ACTIONS.values()]
        return listed + [(name, description) for name, (description, _) in SQL_ACTIONS.items()]

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> Iterator[bytes]:
        def handle(ctx: RequestContext) -> list[bytes]:
            if action.type in SQL_ACTIONS:
                body = action.body.to_pybytes() if action.body is not None else b""
                results = SQL_ACTIONS[action.type][1](self.sql, ctx, body)
                self._log(ctx, action.type, "ok")
                return results
            spec = ACTIONS.get(action.type)
            if spec is None:
                raise NotFound(f"unknown action '{action.type:.60}'; ListActions shows them: " + ", ".join(ACTIONS))
            body = action.body.to_pybytes() if action.body is not None else b""
            require(ctx.caller, spec.permission, f"run the {spec.name} action")
            result = spec.handler(self.deps, ctx, body)
            self._log(ctx, action.type, "ok")
            return [json.dumps(result, default=str).encode()]

        return iter(self._rpc("DoAction", context, action.type, handle))


class _Budget:
    """Rows and bytes a caller may still receive in one result."""

    def __init__(self, rows: int | None, nbytes: int | None) -> None:
        self.rows, self.nbytes = rows, nbytes

    @classmethod
    def for_caller(cls, caller: Caller, settings: Settings) -> _Budget:
        if caller.role == "admin":
            return cls(None, None)
        return cls(settings.limits.max_result_rows, settings.limits.max_result_bytes)

    def spend(self, batch: pa.RecordBatch) -> None:
        if self.rows is None or self.nbytes is None:
            return
        self.rows -= batch.num_rows
        self.nbytes -= batch.nbytes
        if self.rows < 0 or self.nbytes < 0:
            raise ResourceExhausted("result larger than your row or byte limit; narrow the query or add a LIMIT")


def _empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)
