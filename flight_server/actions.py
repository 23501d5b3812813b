"""DoAction handlers: each takes a JSON body and returns a JSON-able result."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from flight_server.cache.tiered import TieredCache
from flight_server.cache.warming import CacheWarmer
from flight_server.catalog import Catalog
from flight_server.commands import load_json, parse_command
from flight_server.context import RequestContext, RunningQueries
from flight_server.engines.base import Engine
from flight_server.engines.breaker import CircuitBreaker
from flight_server.errors import InvalidArgument, NotFound, Unavailable
from flight_server.executor import QueryExecutor
from flight_server.ingest.service import IngestService
from flight_server.ops.lifecycle import Lifecycle
from flight_server.ops.live import LiveMetrics
from flight_server.ops.resources import ResourceMonitor
from flight_server.router import TableRegistry
from flight_server.security.limits import Limiter
from flight_server.sync.service import SyncService


class RequestCounts(Protocol):
    """Counters of requests by RPC and by outcome."""

    def snapshot(self) -> dict[str, Any]: ...


class ActionDeps(Protocol):
    """The server's parts the actions read and drive.

    The composition root satisfies it structurally; members are read-only.
    """

    @property
    def version(self) -> str: ...

    @property
    def engines(self) -> Mapping[str, Engine]: ...

    @property
    def executor(self) -> QueryExecutor: ...

    @property
    def catalog(self) -> Catalog: ...

    @property
    def registry(self) -> TableRegistry: ...

    @property
    def running(self) -> RunningQueries: ...

    @property
    def limits(self) -> Limiter: ...

    @property
    def cache(self) -> TieredCache: ...

    @property
    def warmer(self) -> CacheWarmer: ...

    @property
    def ingest(self) -> IngestService: ...

    @property
    def sync(self) -> SyncService | None: ...

    @property
    def lifecycle(self) -> Lifecycle: ...

    @property
    def resources(self) -> ResourceMonitor: ...

    @property
    def live(self) -> LiveMetrics: ...

    @property
    def stats(self) -> RequestCounts: ...

    def uptime_s(self) -> float: ...

    def breakers(self) -> Mapping[str, CircuitBreaker]: ...


@dataclass(frozen=True)
class ActionSpec:
    name: str
    description: str
    handler: Callable[[ActionDeps, RequestContext, bytes], Any]
    permission: str = "metadata"  # what the caller's role must allow (flight_server.security.auth.PERMISSIONS)


def _json_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    value = load_json(body, "the action body")
    if not isinstance(value, dict):
        raise InvalidArgument("action body must be a JSON object")
    return value


def health(deps: ActionDeps, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    engines: dict[str, Any] = {}
    warnings: list[str] = []
    for name, engine in deps.engines.items():
        try:
            engines[name] = engine.health()
        except Exception as exc:  # noqa: BLE001 - any failure reports the engine as down
            engines[name] = {"status": "down", "error": str(exc).splitlines()[0]}
            warnings.append(f"engine {name} is down")
    breakers = {name: breaker.snapshot() for name, breaker in deps.breakers().items()}
    for name, breaker in breakers.items():
        if breaker["state"] != "closed" and name != "redis":  # the cache warns about Redis itself
            warnings.append(f"{name} circuit breaker is {breaker['state']}; retrying in {breaker['retry_in_s']:.1f} s")
    if deps.sync is not None:
        serving, detail = deps.sync.health()
        if not serving:
            warnings.append(detail)
    warnings.extend(deps.cache.warnings())
    warnings.extend(deps.resources.warnings())
    cache = deps.cache.stats()
    return {
        "status": "ok" if not warnings else "degraded",
        "version": deps.version,
        "uptime_s": deps.uptime_s(),
        "server": deps.lifecycle.snapshot(),
        "engines": engines,
        "breakers": breakers,
        "active_queries": deps.running.snapshot(),
        "requests": deps.stats.snapshot(),
        "limits": deps.limits.stats(),
        "cache": cache,
        "cache_hit_ratios": {
            "overall": cache["hit_ratio"],
            "l1": cache["l1"]["hit_ratio"],
            "l2": None if cache["l2"] is None else cache["l2"]["hit_ratio"],
        },
        "sync": _sync_summary(deps),
        "memory": deps.resources.snapshot(),
        "live_subscribers": deps.live.subscribers,
        "named_queries": len(deps.catalog),
        "warnings": warnings,
    }


def _sync_summary(deps: ActionDeps) -> dict[str, Any]:
    if deps.sync is None:
        return {"state": "off"}
    status = deps.sync.status()
    stalest = [t["staleness_s"] for t in status["tables"].values() if t["staleness_s"] is not None]
    return {
        "state": status["state"],
        "last_error": status["last_error"],
        "staleness_s": max(stalest) if stalest else None,
        "changes_behind": sum(t["changes_behind"] for t in status["tables"].values()),
        "lag_s": status["lag_s"],
        "retry_queue": [item["table"] for item in status["retry_queue"]],
    }


def _sync(deps: ActionDeps) -> SyncService:
    if deps.sync is None:
        raise Unavailable("sync is off: it needs PostgreSQL (FLIGHT_POSTGRES__URI) and FLIGHT_SYNC__ENABLED=true")
    return deps.sync


def sync_status(deps: ActionDeps, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    return _sync(deps).status()


def sync_run(deps: ActionDeps, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    sync = _sync(deps)
    return {"cycle": sync.run_once(), "status": sync.status()}


def sync_validate(deps: ActionDeps, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    request = _json_body(body)
    tables = request.get("tables")
    repair = request.get("repair", True)
    if tables is not None and (not isinstance(tables, list) or not all(isinstance(t, str) for t in tables)):
        raise InvalidArgument("'tables' must be a list of table names (or null for every replicated table)")
    if not isinstance(repair, bool):
        raise InvalidArgument("'repair' must be true or false")
    return _sync(deps).validate(tables, repair)


def explain(deps: ActionDeps, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidArgument('explain needs a command as its body, e.g. {"query": "domains.top"}')
    plan = deps.executor.plan(parse_command(body), ctx)
    return deps.executor.explain(plan)


def cancel(deps: ActionDeps, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    query_id = _json_body(body).get("query_id")
    if not isinstance(query_id, str):
        raise InvalidArgument('cancel needs {"query_id": "..."} (health lists active queries)')
    if not deps.running.cancel(query_id):
        raise NotFound(f"no running query with id '{query_id:.40}'")
    return {"cancelled": query_id}


def cache_stats(deps: ActionDeps, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    return {**deps.cache.stats(), "warming": deps.warmer.stats()}


def cache_invalidate(deps: ActionDeps, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    request = _json_body(body)
    tables = request.get("tables", [])
    pattern = request.get("queries")
    if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
        raise InvalidArgument("'tables' must be a list of table names")
    if pattern is not None and not isinstance(pattern, str):
        raise InvalidArgument("'queries' must be a name pattern such as \"domains.*\"")
    if not tables and pattern is None:
        raise InvalidArgument('cache.invalidate needs {"tables": [...]} and/or {"queries": "domains.*"}')
    unknown = [t for t in tables if not deps.registry.has(t)]
    if unknown:
        raise NotFound(f"unknown table '{unknown[0]:.80}'")
    routes = deps.cache.matching_routes(pattern, deps.catalog.names()) if pattern is not None else []
    if pattern is not None and not routes:
        raise NotFound(f"no named query matches '{pattern:.80}'")
    bumped = deps.cache.invalidate([t.lower() for t in tables], routes)
    deps.warmer.warm_soon("invalidation")
    return {"invalidated": bumped}


def dataset_compact(deps: ActionDeps, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    request = _json_body(body)
    name = request.get("dataset")
    if not isinstance(name, str):
        raise InvalidArgument('dataset.compact needs {"dataset": "cdx_records"} (optional "partition")')
    return deps.ingest.compact(name, request.get("partition"))


ACTIONS: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in (
        ActionSpec(
            "health",
            "Diagnostics as JSON: engines, breakers, cache hit ratios, memory and its trend, active queries, warnings.",
            health,
        ),
        ActionSpec("explain", "Body: a command. The routing decision, final SQL and the engine's plan.", explain),
        ActionSpec("query.cancel", 'Body: {"query_id": ...}. Interrupt a running query.', cancel, "admin"),
        ActionSpec("cache.stats", "Hits and misses per cache level, bytes, evictions, hit ratio.", cache_stats),
        ActionSpec(
            "cache.invalidate",
            'Body: {"tables": [...]} and/or {"queries": "domains.*"}. Bumps data versions: cached '
            "results that read them are never served again.",
            cache_invalidate,
            "admin",
        ),
        ActionSpec(
            "sync.status",
            "Replication of PostgreSQL into DuckDB: state, per-table staleness and changes behind, lag "
            "percentiles, retry queue, last validation.",
            sync_status,
        ),
        ActionSpec("sync.run", "Run one sync cycle now and return what it applied.", sync_run, "admin"),
        ActionSpec(
            "sync.validate",
            'Body: {"tables": [...] or null, "repair": true}. Compares row counts and checksums per key range '
            "between PostgreSQL and the replicas, re-copying ranges that differ.",
            sync_validate,
            "admin",
        ),
        ActionSpec(
            "dataset.compact",
            'Body: {"dataset": ..., "partition": {"partition_year": 2024, ...} (optional)}. Merges the small '
            "Parquet files of each partition into one, atomically for readers.",
            dataset_compact,
            "admin",
        ),
    )
}
