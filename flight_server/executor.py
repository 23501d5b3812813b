"""From a plan to a running, streaming result: describe, open, stream.

`QueryExecutor.plan` hands the command to the planner (flight_server.planner).
`QueryExecutor.describe` answers the result schema and cache status, and
`QueryExecutor.open` consults the result cache, starts the query on its engine and reads
the first batch, so that most failures surface as proper errors before any data is sent;
the rest of the stream stays a C++ reader. When PostgreSQL fails under a plan, both
answer from the DuckDB replicas with a new plan, which they return.

The router learns one latency per run: the time to the first batch (or to the end of an
empty result), recorded in `_run` whichever way the result then goes (streamed, stored in
the cache, or streamed because it is too large to store).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Generic, NamedTuple, TypeVar

import pyarrow as pa

from flight_server.cache.tiered import CacheKey, TieredCache, cache_key, route_version, table_version
from flight_server.catalog import Catalog, NamedQuery, check_columns
from flight_server.commands import Command
from flight_server.context import RequestContext
from flight_server.engines.base import Engine, QueryResult
from flight_server.errors import Unavailable, one_line
from flight_server.planner import Plan, QueryPlanner
from flight_server.router import Router
from flight_server.security.access import AccessPolicy
from flight_server.security.audit import fingerprint
from flight_server.security.limits import Limiter

logger = logging.getLogger(__name__)

_SAMPLE_VALUES: dict[str, Any] = {
    "string": "example.com",
    "integer": 1,
    "float": 1.0,
    "boolean": True,
    "date": dt.date(2000, 1, 1),
    "timestamp": dt.datetime(2000, 1, 1),
    "string_list": ["x"],
}


_MEMO_MOST = 1024  # schemas remembered by `describe`, and results known too large to cache
V = TypeVar("V")
_TOO_LARGE_MEMORY_S = 600.0  # how long a result too large to cache streams without trying again
_CACHED_AT = b"chrono:cached_at"  # schema metadata of a cached result: when it was computed


def _stamped(table: pa.Table) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), _CACHED_AT: str(time.time()).encode()})


def _unstamped(table: pa.Table) -> tuple[pa.Table, float]:
    """The cached table as it was computed, and its age in seconds."""
    metadata = dict(table.schema.metadata or {})
    stamp = metadata.pop(_CACHED_AT, None)
    age = time.time() - float(stamp) if stamp is not None else 0.0
    return table.replace_schema_metadata(metadata or None), age


class _Memo(Generic[V]):
    """A bounded, thread-safe dict: when it is full, the oldest entry goes."""

    def __init__(self, most: int) -> None:
        self._most = most
        self._entries: dict[str, V] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, value: V) -> None:
        with self._lock:
            self._entries.pop(key, None)
            if len(self._entries) >= self._most:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = value


@dataclass
class OpenResult:
    """A result ready to stream: batches already in hand, then (maybe) a live reader.

    A cache hit has all its batches in hand and no reader; a fresh query has read at
    least its first batch, and the reader streams the rest.
    """

    plan: Plan
    schema: pa.Schema
    cache: str
    batches: list[pa.RecordBatch] = field(default_factory=list)
    running: QueryResult | None = None

    def metadata(self) -> dict[str, Any]:
        return self.plan.metadata(self.cache)

    def close(self) -> None:
        if self.running is not None:
            self.running.close()


class Description(NamedTuple):
    """What `QueryExecutor.describe` answers: the plan described, its result schema and cache status."""

    plan: Plan
    schema: pa.Schema
    cache: str


class QueryExecutor:
    def __init__(
        self,
        catalog: Catalog,
        engines: dict[str, Engine],
        router: Router,
        cache: TieredCache,
        syntax_error: Callable[[str], str | None] | None = None,
        deadline_s: float = 60.0,
        access: AccessPolicy | None = None,
        max_generated: int | None = None,
        limits: Limiter | None = None,
    ) -> None:
        self.catalog = catalog
        self.planner = QueryPlanner(catalog, engines, router, syntax_error, access=access, max_generated=max_generated)
        self.limits = limits  # query slots, taken by `describe`
        self.engines = engines
        self.router = router
        self.cache = cache
        self.deadline_s = deadline_s
        self._named_schemas: dict[str, pa.Schema] = {}
        self._described: _Memo[pa.Schema] = _Memo(_MEMO_MOST)  # result schemas by cache key digest
        self._too_large: _Memo[float] = _Memo(_MEMO_MOST)  # results that outgrew a cache entry: shape -> when

    def validate_catalog(self) -> None:
        """Plan every named query not planned yet with sample values: a broken entry stops start-up.

        Queries whose engine is not configured are skipped; they answer UNAVAILABLE. Those
        whose engine is down (PostgreSQL unreachable) are checked against the tables and
        columns the engines know without it (for PostgreSQL: schemas/postgres.sql) and
        planned when this runs again, once PostgreSQL is back.
        """
        for query in self.catalog:
            if query.name in self._named_schemas:
                continue
            needed = {"duckdb", "postgres"} if query.engine == "hybrid" else {query.engine}
            if not needed <= self.router.engines:
                logger.info(
                    "named query needs an engine that is not configured", extra={"fields": {"query": query.name}}
                )
                continue
            sample = {p.name: p.default if p.default is not None else _SAMPLE_VALUES[p.type] for p in query.params}
            try:
                route = self.planner.route_named(query)
                self._named_schemas[query.name] = self._schema(route.engine, query.sql, sample)
            except Unavailable as exc:  # an engine down at start-up: the query answers UNAVAILABLE for now
                logger.warning("named query not planned", extra={"fields": {"query": query.name, "error": str(exc)}})
                self._check_offline(query)
            except Exception as exc:  # noqa: BLE001 - any failure to plan is a catalogue error at start-up
                raise ValueError(f"named query {query.name} does not plan: {one_line(str(exc))}") from None

    def _check_offline(self, query: NamedQuery) -> None:
        known: dict[str, dict[str, str]] = {}
        for engine in self.engines.values():
            known = {**engine.columns(), **known}  # the first engine (DuckDB) wins, as in hybrid plans
        try:
            check_columns(query.sql, known)
        except ValueError as exc:
            raise ValueError(f"named query {query.name} does not plan: {exc}") from None

    def named_schema(self, name: str) -> pa.Schema | None:
        """The result schema of a named query; None while its engine is not configured."""
        return self._named_schemas.get(name)

    # -- planning ----------------------------------------------------------------------

    # -- planning ----------------------------------------------------------------------

    def plan(self, command: Command, ctx: RequestContext, postgres_down: Unavailable | None = None) -> Plan:
        """The plan of a command for `ctx`'s caller (flight_server.planner); raw SQL is
        fingerprinted into `ctx` for the audit trail."""
        if command.kind == "sql":  # before planning: a refused statement is audited with its fingerprint too
            ctx.sql_fingerprint = fingerprint(command.target)
        return self.planner.plan(command, ctx.caller, ctx.query_id, ctx.deadline_s, postgres_down)

    def schema(self, plan: Plan) -> pa.Schema:
        if plan.named is not None and plan.replica is None and plan.named.name in self._named_schemas:
            return self._named_schemas[plan.named.name]
        return self._schema(plan.engine, plan.sql, plan.params, plan.query_id, plan.deadline_s)

    def _schema(
        self, engine: str, sql: str, params: Any, query_id: str | None = None, deadline_s: float | None = None
    ) -> pa.Schema:
        return self.engines[engine].schema(sql, params, query_id=query_id, deadline_s=deadline_s)

    def _execute(self, plan: Plan) -> QueryResult:
        return self.engines[plan.engine].execute(
            plan.sql, plan.params, query_id=plan.query_id, deadline_s=plan.deadline_s
        )

    def explain(self, plan: Plan) -> dict[str, Any]:
        out: dict[str, Any] = {**plan.metadata("not-run"), "sql": plan.sql, "params": plan.params}
        engine = self.engines[plan.engine]
        out.update(engine.plan_details(plan.sql, plan.params))  # what the engine runs (e.g. translated SQL)
        out["engine_plan"] = engine.explain(plan.sql, plan.params)
        out["latency_ms"] = self.router.latency.snapshot().get(plan.label, {})
        return out

    # -- execution ---------------------------------------------------------------------

    def _key(self, plan: Plan, ctx: RequestContext) -> CacheKey:
        names = [table_version(t) for t in plan.tables]
        if plan.named is not None:
            names.append(route_version(plan.named.name))
        versions = self.cache.versions(names)
        return cache_key(plan.sql, plan.params, plan.engine, ctx.caller.scope, versions, plan.ttl_s)

    def cache_status(self, plan: Plan, ctx: RequestContext) -> str:
        """What the cache would answer for this plan now (for FlightInfo; not counted)."""
        return self.cache.peek(self._key(plan, ctx), plan.command.cache)

    def _on_replicas(self, plan: Plan, ctx: RequestContext, down: Unavailable) -> Plan:
        """`plan` planned again onto the DuckDB replicas after PostgreSQL failed under it (else raise `down`).

        The first query after PostgreSQL goes away finds its breaker still closed, is
        routed to PostgreSQL and fails there; planned again with that failure in hand it
        is answered from the replicas like the queries after it, which the open breaker
        sends there directly.
        """
        if self.planner.replicas is None or plan.replica is not None or plan.engine not in ("postgres", "hybrid"):
            raise down
        return self.plan(plan.command, ctx, postgres_down=down)

    def describe(self, plan: Plan, ctx: RequestContext) -> Description:
        """The plan's result schema and cache status, for a FlightInfo (see `_describe`), and
        the plan they belong to: `plan`, or the replica plan when PostgreSQL failed under it."""
        try:
            return Description(plan, *self._describe(plan, ctx))
        except Unavailable as exc:
            plan = self._on_replicas(plan, ctx, exc)
            return Description(plan, *self._describe(plan, ctx))

    def _describe(self, plan: Plan, ctx: RequestContext) -> tuple[pa.Schema, str]:
        """Schemas are remembered by the plan's cache key (SQL, parameters, engine, scope
        and data versions), so a repeated statement skips the engine's describe step.
        The describe step plans the query, which can be real work (a PIVOT reads its
        columns' values): it holds a query slot of the caller, as DoGet does, and runs
        under the caller's deadline.
        """
        key = self._key(plan, ctx)
        schema = self._described.get(key.digest)
        if schema is None:
            with self.limits.slot(ctx.caller, ctx.peer) if self.limits is not None else contextlib.nullcontext():
                schema = self.schema(plan)
            self._described.put(key.digest, schema)
        return schema, self.cache.peek(key, plan.command.cache)

    def open(self, plan: Plan, ctx: RequestContext, *, count_use: bool = True) -> OpenResult:
        """Serve from the cache, or run the query (once for concurrent identical misses)."""
        try:
            return self._open(plan, ctx, count_use)
        except Unavailable as exc:
            return self._open(self._on_replicas(plan, ctx, exc), ctx, False)

    def _open(self, plan: Plan, ctx: RequestContext, count_use: bool) -> OpenResult:
        if plan.named is not None and count_use:
            self.cache.count_use(json.dumps({"c": plan.command.to_json().decode(), "s": ctx.caller.scope}))
        key = self._key(plan, ctx)
        mode = plan.command.cache
        table, status = self.cache.lookup(key, mode)
        if table is not None:
            table, age = _unstamped(table)
            if not self._too_old(plan, age):
                return OpenResult(plan, table.schema, status, batches=table.to_batches())
            mode, status = "refresh", "miss"
        if status == "bypass":
            return self._start(plan)
        shape = self._shape(plan, ctx)
        if self._known_too_large(shape):  # stream at once instead of holding what cannot be stored
            self.cache.note_too_large()
            return self._start(plan, status)
        with self.cache.single_flight(key.digest, self.deadline_s) as leader:
            if not leader and mode == "use":
                table, shared = self.cache.lookup(key, "use")
                if table is not None:
                    table, _ = _unstamped(table)
                    return OpenResult(plan, table.schema, shared, batches=table.to_batches())
            return self._run_and_store(plan, key, status, shape)

    @staticmethod
    def _shape(plan: Plan, ctx: RequestContext) -> str:
        """The query and its caller, whatever the data versions: what makes a result its size."""
        return cache_key(plan.sql, plan.params, plan.engine, ctx.caller.scope, {}, 0).digest

    def _known_too_large(self, shape: str) -> bool:
        seen = self._too_large.get(shape)
        return seen is not None and time.monotonic() - seen < _TOO_LARGE_MEMORY_S

    @staticmethod
    def _too_old(plan: Plan, age_s: float) -> bool:
        """A cached PostgreSQL (or hybrid) result older than the caller's `max_staleness_s`.

        Replica results need no such check: every batch the sync applies bumps the data
        versions of its tables, so a cached replica result is as fresh as the replica.
        """
        bound = plan.command.max_staleness_s
        return bound is not None and plan.engine in ("postgres", "hybrid") and age_s > bound

    def _run(self, plan: Plan) -> tuple[QueryResult, pa.RecordBatch | None]:
        """Start the plan's query and read its first batch (None: the result is empty).

        The one place the router's latency feedback is recorded: the time to the first
        batch, or to the end of an empty result, on every path that runs a query.
        """
        started = time.monotonic()
        running = self._execute(plan)
        try:
            first: pa.RecordBatch | None = running.reader.read_next_batch()
        except StopIteration:
            first = None
        except BaseException as exc:  # noqa: BLE001 - the engine's error, translated and re-raised
            running.close()
            raise running.translate(exc) from None
        self.router.latency.record(plan.label, plan.engine, (time.monotonic() - started) * 1000)
        return running, first

    def _start(self, plan: Plan, status: str = "bypass") -> OpenResult:
        running, first = self._run(plan)
        if first is None:
            running.close()
            return OpenResult(plan, running.schema, status)
        return OpenResult(plan, running.schema, status, batches=[first], running=running)

    def _run_and_store(self, plan: Plan, key: CacheKey, status: str, shape: str) -> OpenResult:
        """Read the result while it fits a cache entry; a complete one is stored.

        A larger result keeps streaming: the batches read so far go first, then the
        live reader, and nothing is cached.
        """
        running, first = self._run(plan)
        batches = [] if first is None else [first]
        held = sum(batch.nbytes for batch in batches)
        complete = first is None
        try:
            while not complete and held <= self.cache.max_entry_bytes:
                try:
                    batch = running.reader.read_next_batch()
                except StopIteration:
                    complete = True
                    break
                batches.append(batch)
                held += batch.nbytes
            if complete:
                running.close()
                table = pa.Table.from_batches(batches, schema=running.schema)
                self.cache.store(key, _stamped(table))
                return OpenResult(plan, running.schema, status, batches=batches)
        except BaseException as exc:  # noqa: BLE001 - the engine's error, translated and re-raised
            running.close()
            raise running.translate(exc) from None
        self.cache.note_too_large()
        self._too_large.put(shape, time.monotonic())
        return OpenResult(plan, running.schema, status, batches=batches, running=running)

    def run_to_table(self, plan: Plan, ctx: RequestContext, *, count_use: bool = True) -> pa.Table:
        """The whole result as a table (for actions and small internal queries)."""
        result = self.open(plan, ctx, count_use=count_use)
        try:
            batches = list(result.batches)
            if result.running is not None:
                batches.extend(result.running.batches())
            return pa.Table.from_batches(batches, schema=result.schema)
        finally:
            result.close()

    def warm(self, command: Command, ctx: RequestContext) -> bool:
        """Refill the cache entry of `command` as `ctx`'s caller gets it; False when it is still cached.

        The run is not counted as a use, so warming does not keep its own entries hot.
        """
        plan = self.plan(replace(command, cache="refresh"), ctx)
        if self.cache_status(plan, ctx) != "miss":
            return False
        self.run_to_table(plan, ctx, count_use=False)
        return True
