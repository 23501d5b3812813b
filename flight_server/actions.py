"""DoAction handlers: each takes a JSON body and returns a JSON-able result."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from flight_server.app import App
from flight_server.commands import parse_command
from flight_server.context import RequestContext
from flight_server.errors import InvalidArgument, NotFound


@dataclass(frozen=True)
class ActionSpec:
    name: str
    description: str
    handler: Callable[[App, RequestContext, bytes], Any]


def _json_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"action body must be a JSON object: {exc}") from None
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
    process = psutil.Process()
    memory = psutil.virtual_memory()
    if memory.percent > 80:
        warnings.append(f"system memory use is {memory.percent:.0f}% (over 80%)")
    return {
        "status": "ok" if not warnings else "degraded",
        "version": app.version,
        "uptime_s": round(time.time() - app.started, 3),
        "engines": engines,
        "active_queries": app.running.snapshot(),
        "requests": app.stats.snapshot(),
        "cache": app.cache.stats(),
        "memory": {"rss_bytes": process.memory_info().rss, "system_percent": memory.percent},
        "named_queries": len(app.catalog),
        "warnings": warnings,
    }


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


ACTIONS: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in (
        ActionSpec(
            "health", "Diagnostics as JSON: engines, active queries, requests, memory, warnings.", health
        ),
        ActionSpec(
            "explain", "Body: a command. The routing decision, final SQL and the engine's plan.", explain
        ),
        ActionSpec("query.cancel", 'Body: {"query_id": ...}. Interrupt a running query.', cancel),
    )
}
