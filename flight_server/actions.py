"""DoAction handlers: each takes a JSON body and returns a JSON-able result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flight_server.app import App
from flight_server.commands import load_json, parse_command
from flight_server.context import RequestContext
from flight_server.errors import InvalidArgument, NotFound, Unavailable
from flight_server.sync.service import SyncService


@dataclass(frozen=True)
class ActionSpec:
    name: str
    description: str
    handler: Callable[[App, RequestContext, bytes], Any]
    permission: str = "metadata"  # what the caller's role must allow (flight_server.security.auth.PERMISSIONS)


def _json_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    value = load_json(body, "the action body")
    if not isinstance(value, dict):
        raise InvalidArgument("action body must be a JSON object")
    return value


def health(app: App, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    engines: dict[str, Any] = {}
    warnings: list[str] = []
    for name, engine in app.engines.items():
        try:
            engines[name] = engine.health()
        except Exception as exc:
            engines[name] = {"status": "down", "error": str(exc).splitlines()[0]}
            warnings.append(f"engine {name} is down")
    breakers = {name: breaker.snapshot() for name, breaker in app.breakers().items()}
    for name, breaker in breakers.items():
        if breaker["state"] != "closed" and name != "redis":  # the cache warns about Redis itself
            warnings.append(f"{name} circuit breaker is {breaker['state']}; retrying in {breaker['retry_in_s']:.1f} s")
    if app.sync is not None:
        serving, detail = app.sync.health()
        if not serving:
            warnings.append(detail)
    warnings.extend(app.cache.warnings())
    warnings.extend(app.resources.warnings())
    cache = app.cache.stats()
    return {
        "status": "ok" if not warnings else "degraded",
        "version": app.version,
        "uptime_s": app.uptime_s(),
        "server": app.lifecycle.snapshot(),
        "engines": engines,
        "breakers": breakers,
        "active_queries": app.running.snapshot(),
        "requests": app.stats.snapshot(),
        "limits": app.limits.stats(),
        "cache": cache,
        "cache_hit_ratios": {
            "overall": cache["hit_ratio"],
            "l1": cache["l1"]["hit_ratio"],
            "l2": None if cache["l2"] is None else cache["l2"]["hit_ratio"],
        },
        "sync": _sync_summary(app),
        "memory": app.resources.snapshot(),
        "live_subscribers": app.live.subscribers,
        "named_queries": len(app.catalog),
        "warnings": warnings,
    }


def _sync_summary(app: App) -> dict[str, Any]:
    if app.sync is None:
        return {"state": "off"}
    status = app.sync.status()
    stalest = [t["staleness_s"] for t in status["tables"].values() if t["staleness_s"] is not None]
    return {
        "state": status["state"],
        "last_error": status["last_error"],
        "staleness_s": max(stalest) if stalest else None,
        "changes_behind": sum(t["changes_behind"] for t in status["tables"].values()),
        "lag_s": status["lag_s"],
        "retry_queue": [item["table"] for item in status["retry_queue"]],
    }


def _sync(app: App) -> SyncService:
    if app.sync is None:
        raise Unavailable("sync is off: it needs PostgreSQL (FLIGHT_POSTGRES__URI) and FLIGHT_SYNC__ENABLED=true")
    return app.sync


def sync_status(app: App, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    return _sync(app).status()


def sync_run(app: App, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    sync = _sync(app)
    return {"cycle": sync.run_once(), "status": sync.status()}


def sync_validate(app: App, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    request = _json_body(body)
    tables = request.get("tables")
    repair = request.get("repair", True)
    if tables is not None and (not isinstance(tables, list) or not all(isinstance(t, str) for t in tables)):
        raise InvalidArgument("'tables' must be a list of table names (or null for every replicated table)")
    if not isinstance(repair, bool):
        raise InvalidArgument("'repair' must be true or false")
    return _sync(app).validate(tables, repair)


def explain(app: App, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidArgument('explain needs a command as its body, e.g. {"query": "domains.top"}')
    plan = app.executor.plan(parse_command(body), ctx)
    return app.executor.explain(plan)


def cancel(app: App, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    query_id = _json_body(body).get("query_id")
    if not isinstance(query_id, str):
        raise InvalidArgument('cancel needs {"query_id": "..."} (health lists active queries)')
    if not app.running.cancel(query_id):
        raise NotFound(f"no running query with id '{query_id:.40}'")
    return {"cancelled": query_id}


def cache_stats(app: App, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    return {**app.cache.stats(), "warming": app.warmer.stats()}


def cache_invalidate(app: App, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    request = _json_body(body)
    tables = request.get("tables", [])
    pattern = request.get("queries")
    if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
        raise InvalidArgument("'tables' must be a list of table names")
    if pattern is not None and not isinstance(pattern, str):
        raise InvalidArgument("'queries' must be a name pattern such as \"domains.*\"")
    if not tables and pattern is None:
        raise InvalidArgument('cache.invalidate needs {"tables": [...]} and/or {"queries": "domains.*"}')
    unknown = [t for t in tables if not app.registry.has(t)]
    if unknown:
        raise NotFound(f"unknown table '{unknown[0]:.80}'")
    routes = app.cache.matching_routes(pattern, app.catalog.names()) if pattern is not None else []
    if pattern is not None and not routes:
        raise NotFound(f"no named query matches '{pattern:.80}'")
    bumped = app.cache.invalidate([t.lower() for t in tables], routes)
    app.warmer.warm_soon("invalidation")
    return {"invalidated": bumped}


def dataset_compact(app: App, ctx: RequestContext, body: bytes) -> dict[str, Any]:
    request = _json_body(body)
    name = request.get("dataset")
    if not isinstance(name, str):
        raise InvalidArgument('dataset.compact needs {"dataset": "cdx_records"} (optional "partition")')
    return app.ingest.compact(name, request.get("partition"))


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
