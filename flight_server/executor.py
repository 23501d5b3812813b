"""From a decoded command to a running, streaming result.

`QueryExecutor.plan` resolves a command (named query, raw SQL or dataset) into a
`Plan`: the final SQL, bound parameters, the tables read and the engine the router
chose. `QueryExecutor.open` consults the result cache, starts the query on its engine
and reads the first batch, so that most failures surface as proper errors before any
data is sent; the rest of the stream stays a C++ reader.
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
from typing import Any, Generic, TypeVar

import pyarrow as pa
import sqlglot

from flight_server.cache.tiered import CacheKey, TieredCache, cache_key, route_version, table_version
from flight_server.catalog import Catalog, NamedQuery, check_columns
from flight_server.commands import Command
from flight_server.context import Caller, RequestContext
from flight_server.engines.base import Engine, QueryResult
from flight_server.errors import NotFound, PermissionDenied, Unavailable, one_line
from flight_server.replicas import ReplicaChoice, ReplicaRouter
from flight_server.router import Route, Router
from flight_server.security.access import AccessPolicy
from flight_server.security.audit import fingerprint
from flight_server.security.limits import Limiter
from flight_server.security.middleware import require
from flight_server.security.scoping import PROJECT_COLUMNS, project_column, scope_sql
from flight_server.security.sqlguard import check_read_only

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
RAW_SQL_TTL_S = 300  # raw SQL and whole datasets; data versions keep them correct
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
class Plan:
    command: Command
    label: str  # named query, dataset, or "sql"
    engine: str
    reason: str
    sql: str
    params: Any
    tables: tuple[str, ...]
    ttl_s: float
    query_id: str
    named: NamedQuery | None = None
    deadline_s: float | None = None
    tree: Any = None  # the parsed SQL, for the replica decision
    unavailable: Unavailable | None = None  # the router's error when PostgreSQL is down
    replica: ReplicaChoice | None = None

    def become(self, other: Plan) -> None:
        """Take every field of `other`: the same request, planned again."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(other, name))

    def metadata(self, cache: str) -> dict[str, Any]:
        out = {
            "engine": self.engine,
            "reason": self.reason,
            "cache": cache,
            "query_id": self.query_id,
            "route": self.label,
            "tables": list(self.tables),
            "replica": self.replica is not None,
        }
        if self.replica is not None:
            out["staleness_s"] = round(self.replica.staleness_s, 3)
            out["replica_tables"] = list(self.replica.tables)
        return out


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
    on_close: list[Callable[[], None]] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        return self.plan.metadata(self.cache)

    def close(self) -> None:
        if self.running is not None:
            self.running.close()
        for callback in self.on_close:
            callback()


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
        self.access = access or AccessPolicy()
        self.max_generated = max_generated  # see flight_server.security.sqlsize
        self.limits = limits  # query slots, taken by `describe`
        self.engines = engines
        self.router = router
        self.cache = cache
        self.deadline_s = deadline_s
        self._syntax_error = syntax_error
        self._named_schemas: dict[str, pa.Schema] = {}
        self._described: _Memo[pa.Schema] = _Memo(_MEMO_MOST)  # result schemas by cache key digest
        self._too_large: _Memo[float] = _Memo(_MEMO_MOST)  # results that outgrew a cache entry: shape -> when
        self._scoped_cache: tuple[frozenset[str], dict[str, str]] | None = None
        self._named_trees = {q.name: sqlglot.parse_one(q.sql, read="duckdb") for q in catalog}
        self.replicas: ReplicaRouter | None = None  # set when PostgreSQL is replicated into DuckDB

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
                route = self.router.route(
                    query.tables, declared=query.engine, tree=self._named_trees[query.name], label=query.name
                )
                self._named_schemas[query.name] = self._schema(route.engine, query.sql, sample)
            except Unavailable as exc:  # an engine down at start-up: the query answers UNAVAILABLE for now
                logger.warning("named query not planned", extra={"fields": {"query": query.name, "error": str(exc)}})
                self._check_offline(query)
            except Exception as exc:
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

    def plan(self, command: Command, ctx: RequestContext, postgres_down: Unavailable | None = None) -> Plan:
        """The plan of a command; `postgres_down`: PostgreSQL just failed under this very request."""
        plan = self._plan(command, ctx)
        if postgres_down is not None and plan.engine in ("postgres", "hybrid"):
            plan.unavailable = plan.unavailable or postgres_down
        plan.deadline_s = ctx.deadline_s
        if command.kind == "sql":
            ctx.sql_fingerprint = fingerprint(command.target)
        self._use_replicas(plan)
        self._restrict(plan, ctx.caller)
        return plan

    def _route(
        self,
        command: Command,
        tables: tuple[str, ...],
        declared: str | None = None,
        tree: Any = None,
        label: str = "sql",
    ) -> tuple[Route, Unavailable | None]:
        """The router's choice; with PostgreSQL down and replicas kept, a provisional one.

        The hint `duckdb` over OLTP tables asks for their replicas: routed as `auto` here,
        then `_use_replicas` holds the plan to them.
        """
        hint = command.engine
        if hint == "duckdb" and self.replicas is not None and self.replicas.postgres_tables("hybrid", tables):
            hint = "auto"
        try:
            return self.router.route(tables, hint, declared=declared, tree=tree, label=label), None
        except Unavailable as exc:
            if self.replicas is None or command.engine == "postgres" or "postgres" not in self.engines:
                raise
            if not self.replicas.postgres_tables("hybrid", tables) or not self.router.available("duckdb"):
                raise
            engine = "postgres" if all(self.router.registry.engines(t) == ["postgres"] for t in tables) else "hybrid"
            return Route(engine, str(exc)), exc

    def _use_replicas(self, plan: Plan) -> None:
        """Point the plan at DuckDB replicas when they are fresh enough (flight_server.replicas)."""
        if self.replicas is None:
            return
        choice = self.replicas.choose(plan.command, plan.engine, plan.sql, plan.tables, plan.tree, plan.unavailable)
        if choice is None:
            if plan.unavailable is not None:
                raise plan.unavailable
            return
        plan.engine, plan.sql, plan.reason, plan.replica = "duckdb", choice.sql, choice.reason, choice

    def _restrict(self, plan: Plan, caller: Caller) -> None:
        """Rewrite the plan's SQL so that it reads only what the caller may see.

        Scoped callers read only their projects' rows. Raw SQL and datasets of
        non-admins read no admin-only table and no secret column; `SELECT *` reads no
        secret column for anyone, and admins get the ones they name (flight_server.security.access).
        Named queries are declared by the catalogue and keep their SQL apart from scoping.
        """
        projects = caller.projects
        if plan.named is not None and projects is not None:
            for param in plan.named.params:
                value = plan.params.get(param.name) if isinstance(plan.params, dict) else None
                wanted = value if isinstance(value, list) else [value] if param.name.startswith("project") else []
                denied = [v for v in wanted if v is not None and v not in projects]
                if denied:
                    raise PermissionDenied(f"no access to project '{denied[0]}'")
        columns, secret = self.access.restrictions(plan.tables, caller.role) if plan.named is None else ({}, {})
        scoped = self.scoped_tables() if projects is not None else {}
        if any(t in scoped for t in plan.tables) or secret:
            admin = caller.role == "admin"
            plan.sql = scope_sql(plan.sql, projects, scoped, columns=columns, secret=secret, secrets_allowed=admin)
            if projects is not None:
                plan.reason += f"; scoped to {len(projects)} project(s)"

    def scoped_tables(self) -> dict[str, str]:
        """Tables that carry a project: the known ones, and datasets with a project_id column.

        Column names match the way the engines resolve them: DuckDB ignores case even in
        quoted names, so `Project_ID` carries the project too; the filter names the
        column exactly as the engine spells it.
        """
        known = frozenset(self.router.registry.tables())
        if self._scoped_cache is not None and self._scoped_cache[0] == known:
            return self._scoped_cache[1]
        tables = dict(PROJECT_COLUMNS)
        for engine in self.engines.values():
            for table, cols in engine.columns().items():
                column = project_column(cols)
                if column is not None:
                    tables.setdefault(table, column)
        self._scoped_cache = (known, tables)
        return tables

    def _plan(self, command: Command, ctx: RequestContext) -> Plan:
        if command.kind == "query":
            require(ctx.caller, "query", "run named queries")
            named = self.catalog.get(command.target)
            params: Any = named.bind(command.params if isinstance(command.params, dict) else {})
            tree = self._named_trees[named.name]
            route, down = self._route(command, named.tables, named.engine, tree, named.name)
            return Plan(
                command,
                named.name,
                route.engine,
                route.reason,
                named.sql,
                params,
                named.tables,
                named.ttl_s,
                ctx.query_id,
                named,
                tree=tree,
                unavailable=down,
            )
        require(ctx.caller, "sql", "run raw SQL or read whole datasets")
        if command.kind == "dataset":
            name = command.target.lower()
            if not self.router.registry.has(name):
                raise NotFound(f"unknown dataset '{command.target:.80}'; ListFlights shows the datasets")
            route = self.router.route([name], command.engine, label=name)
            return Plan(
                command,
                name,
                route.engine,
                route.reason,
                f'SELECT * FROM "{name}"',
                None,
                (name,),
                RAW_SQL_TTL_S,
                ctx.query_id,
            )
        checked = check_read_only(
            command.target,
            self.router.registry.has,
            self._syntax_error,
            max_generated=self.max_generated,
            params=command.params or None,
        )
        route, down = self._route(command, tuple(checked.tables), tree=checked.tree)
        params = command.params if command.params else None
        return Plan(
            command,
            "sql",
            route.engine,
            route.reason,
            checked.sql,
            params,
            tuple(checked.tables),
            RAW_SQL_TTL_S,
            ctx.query_id,
            tree=checked.tree,
            unavailable=down,
        )

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

    def _on_replicas(self, plan: Plan, ctx: RequestContext, down: Unavailable) -> None:
        """Re-plan in place on the DuckDB replicas after PostgreSQL failed under `plan` (else raise `down`).

        The first query after PostgreSQL goes away finds its breaker still closed, is
        routed to PostgreSQL and fails there; planned again with that failure in hand it
        is answered from the replicas like the queries after it, which the open breaker
        sends there directly.
        """
        if self.replicas is None or plan.replica is not None or plan.engine not in ("postgres", "hybrid"):
            raise down
        plan.become(self.plan(plan.command, ctx, postgres_down=down))

    def describe(self, plan: Plan, ctx: RequestContext) -> tuple[pa.Schema, str]:
        """The plan's result schema and cache status, for a FlightInfo (see `_describe`)."""
        try:
            return self._describe(plan, ctx)
        except Unavailable as exc:
            self._on_replicas(plan, ctx, exc)
            return self._describe(plan, ctx)

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
            with self.limits.slot(ctx.caller) if self.limits is not None else contextlib.nullcontext():
                schema = self.schema(plan)
            self._described.put(key.digest, schema)
        return schema, self.cache.peek(key, plan.command.cache)

    def open(self, plan: Plan, ctx: RequestContext, *, count_use: bool = True) -> OpenResult:
        """Serve from the cache, or run the query (once for concurrent identical misses)."""
        try:
            return self._open(plan, ctx, count_use)
        except Unavailable as exc:
            self._on_replicas(plan, ctx, exc)
            return self._open(plan, ctx, False)

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

    def _start(self, plan: Plan, status: str = "bypass") -> OpenResult:
        started = time.monotonic()
        running = self._execute(plan)
        try:
            first = [running.reader.read_next_batch()]
            self.router.latency.record(plan.label, plan.engine, (time.monotonic() - started) * 1000)
        except StopIteration:
            running.close()
            return OpenResult(plan, running.schema, status)
        except BaseException as exc:
            running.close()
            raise running.translate(exc) from None
        return OpenResult(plan, running.schema, status, batches=first, running=running)

    def _run_and_store(self, plan: Plan, key: CacheKey, status: str, shape: str) -> OpenResult:
        """Read the result while it fits a cache entry; a complete one is stored.

        A larger result keeps streaming: the batches read so far go first, then the
        live reader, and nothing is cached.
        """
        started = time.monotonic()
        running = self._execute(plan)
        batches: list[pa.RecordBatch] = []
        held = 0
        try:
            while held <= self.cache.max_entry_bytes:
                try:
                    batch = running.reader.read_next_batch()
                except StopIteration:
                    running.close()
                    self.router.latency.record(plan.label, plan.engine, (time.monotonic() - started) * 1000)
                    table = pa.Table.from_batches(batches, schema=running.schema)
                    self.cache.store(key, _stamped(table))
                    return OpenResult(plan, running.schema, status, batches=batches)
                batches.append(batch)
                held += batch.nbytes
        except BaseException as exc:
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
                try:
                    batches.extend(result.running.reader)
                except BaseException as exc:
                    raise result.running.translate(exc) from None
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
