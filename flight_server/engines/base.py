"""The interface every engine implements.

An engine runs read-only SQL in the server's one dialect (DuckDB's; an engine that
speaks another translates it) with bound parameters and hands back a
`pyarrow.RecordBatchReader` that streams; it can describe a result's schema without
running the query, explain a plan, report its health and interrupt a query.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import pyarrow as pa

Params = Sequence[Any] | Mapping[str, Any] | None


class QueryResult:
    """A started query: its streaming reader and what to release when done with it."""

    def __init__(
        self,
        reader: pa.RecordBatchReader,
        release: Callable[[], None],
        translate: Callable[[BaseException], BaseException],
    ) -> None:
        self.reader = reader
        self.translate = translate  # engine exception -> ChronoError, for reads of the reader
        self._release: Callable[[], None] | None = release

    @property
    def schema(self) -> pa.Schema:
        return self.reader.schema

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The reader's batches as they arrive, its failures as the engine words them."""
        try:
            yield from self.reader
        except Exception as exc:  # noqa: BLE001 - the engine's error, translated and re-raised
            raise self.translate(exc) from None

    def close(self) -> None:
        """Stop the query if it is still running and free its resources (idempotent)."""
        release, self._release = self._release, None
        if release is not None:
            release()


class Engine(Protocol):
    name: str

    def execute(self, sql: str, params: Params, *, query_id: str, deadline_s: float | None = None) -> QueryResult:
        """Start the query; its reader streams the batches. Raises ChronoError subclasses."""
        ...

    def schema(
        self, sql: str, params: Params, *, query_id: str | None = None, deadline_s: float | None = None
    ) -> pa.Schema:
        """The result schema, without running the whole query.

        With a `query_id`, the work of planning (which may run queries, e.g. to find a
        PIVOT's columns) is registered as running, under the deadline, where the engine can
        interrupt it.
        """
        ...

    def explain(self, sql: str, params: Params) -> str:
        """The engine's plan for the query, as text."""
        ...

    def plan_details(self, sql: str, params: Params) -> dict[str, Any]:
        """What the engine runs for the query besides its plan (e.g. the SQL it translated
        the query to), for `explain`; empty when it runs the query as given."""
        ...

    def tables(self) -> dict[str, str]:
        """Tables and views this engine serves: name -> kind ('table' or 'view')."""
        ...

    def refresh_tables(self) -> dict[str, str]:
        """Ask the engine for its tables (and columns) again; returns `tables()`."""
        ...

    def columns(self) -> dict[str, dict[str, str]]:
        """Every table's columns with their types in the engine's terms: table -> column -> type."""
        ...

    def health(self) -> dict[str, Any]:
        """A quick check and a few diagnostics; raises when the engine is down."""
        ...

    def cancel(self, query_id: str) -> bool:
        """Interrupt a running query; False when it is not running here."""
        ...

    def close(self) -> None: ...
