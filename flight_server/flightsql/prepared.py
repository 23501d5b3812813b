"""Prepared statements of Flight SQL clients: handles tied to their caller, bounded, expiring.

A handle is a random token. Only the caller that created it can use or close it; to
anyone else it does not exist (NOT_FOUND). A statement unused for
`FLIGHT_FLIGHTSQL__PREPARED_IDLE_S` is dropped; each caller may hold
`FLIGHT_FLIGHTSQL__MAX_PREPARED_PER_CALLER` and the server `FLIGHT_FLIGHTSQL__MAX_PREPARED`
(RESOURCE_EXHAUSTED past either). Bound parameter rows live with the statement until
the next bind replaces them; a statement bound to many rows runs once per row, streamed
(`BoundRun`).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from flight_server.commands import Command
from flight_server.context import Caller
from flight_server.errors import InvalidArgument, NotFound, ResourceExhausted
from flight_server.executor import OpenResult
from flight_server.settings import FlightSqlSettings


@dataclass
class PreparedStatement:
    handle: bytes
    owner: Caller
    command: Command  # the statement as a command, without parameters
    dataset_schema: pa.Schema
    parameter_schema: pa.Schema
    rows: list[list[Any] | dict[str, Any]] = field(default_factory=list)  # bound parameter rows
    last_used: float = field(default_factory=time.monotonic)

    def commands(self) -> list[Command]:
        """One command per bound parameter row (one without parameters when none are bound)."""
        if not self.rows:
            return [self.command]
        return [
            Command(self.command.kind, self.command.target, row, self.command.engine, self.command.cache)
            for row in self.rows
        ]


class PreparedStatements:
    def __init__(self, settings: FlightSqlSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock  # monotonic seconds, in which idle time is measured (injectable)
        self._lock = threading.Lock()
        self._statements: dict[bytes, PreparedStatement] = {}

    def create(
        self, caller: Caller, command: Command, dataset_schema: pa.Schema, parameter_schema: pa.Schema
    ) -> PreparedStatement:
        with self._lock:
            self._expire()
            if len(self._statements) >= self.settings.max_prepared:
                raise ResourceExhausted(
                    f"the server holds {self.settings.max_prepared} prepared statements; close some or retry later"
                )
            mine = sum(1 for s in self._statements.values() if s.owner == caller)
            if mine >= self.settings.max_prepared_per_caller:
                raise ResourceExhausted(
                    f"you hold {mine} prepared statements, the most allowed; close some (ClosePreparedStatement)"
                )
            statement = PreparedStatement(
                secrets.token_bytes(16), caller, command, dataset_schema, parameter_schema, last_used=self.clock()
            )
            self._statements[statement.handle] = statement
            return statement

    def get(self, caller: Caller, handle: bytes) -> PreparedStatement:
        """The caller's statement with this handle (its idle clock restarts)."""
        with self._lock:
            self._expire()
            statement = self._statements.get(handle)
            if statement is None or statement.owner != caller:
                raise NotFound("unknown or expired prepared statement handle; prepare the statement again")
            statement.last_used = self.clock()
            return statement

    def close(self, caller: Caller, handle: bytes) -> None:
        with self._lock:
            statement = self._statements.get(handle)
            if statement is None or statement.owner != caller:
                raise NotFound("unknown or expired prepared statement handle")
            del self._statements[handle]

    def __len__(self) -> int:
        with self._lock:
            return len(self._statements)

    def _expire(self) -> None:
        cutoff = self.clock() - self.settings.prepared_idle_s
        for handle in [h for h, s in self._statements.items() if s.last_used < cutoff]:
            del self._statements[handle]


class BoundRun:
    """A statement bound to many parameter rows: run once per row, results streamed in row order.

    Rows run one at a time as the client reads: a row's query is opened only once the
    previous row's result has been handed on, so the server holds at most one row's
    result (what its opened result has in hand) however many rows are bound, and a
    consumer that stops reading (a result budget exceeded, a client gone) stops the run
    before the next row starts. One query slot is held from the first row to the end.
    Batches are cast to `schema`, the first row's result schema that the FlightInfo
    announced.
    """

    def __init__(
        self,
        schema: pa.Schema,
        rows: int,
        open_row: Callable[[int], OpenResult],
        slot: tuple[Callable[[], None], Callable[[], None]],
    ) -> None:
        self.schema = schema
        self.rows = rows
        self._open_row = open_row
        self._acquire, self._release = slot
        self._lock = threading.Lock()
        self._current: OpenResult | None = None
        self._held = False  # the slot, taken by `batches` and given back once

    def stop(self) -> None:
        """End the run from outside (its client stopped reading): the open row's query is
        closed and the slot given back; the generator, resumed later, only unwinds."""
        with self._lock:
            current = self._current
        if current is not None:
            current.close()
        self._give_back()

    def _give_back(self) -> None:
        with self._lock:
            held, self._held = self._held, False
        if held:
            self._release()

    def batches(self) -> Generator[pa.RecordBatch, None, None]:
        """Every row's result batches, in order; closing the iterator stops the run."""
        self._acquire()
        with self._lock:
            self._held = True
        try:
            for index in range(self.rows):
                result = self._open_row(index)
                with self._lock:
                    self._current = result
                try:
                    for batch in result.batches:
                        yield self._cast(batch, index)
                    for batch in result.running.batches() if result.running is not None else ():
                        yield self._cast(batch, index)
                finally:
                    with self._lock:
                        self._current = None
                    result.close()
        finally:
            self._give_back()

    def _cast(self, batch: pa.RecordBatch, index: int) -> pa.RecordBatch:
        if batch.schema.equals(self.schema):
            return batch
        try:
            return batch.cast(self.schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            raise InvalidArgument(
                f"parameter row {index + 1} gives a result of other types than the first row's; "
                "bind values of one type for each parameter"
            ) from None
