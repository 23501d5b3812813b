"""Routing: which engine runs a query, and why.

A `TableRegistry` knows which engines hold each table. The router decides from the
tables a query reads, its shape (aggregations and scans belong to DuckDB, lookups by
key to PostgreSQL), the named query's declared engine, the client's engine hint,
engine health (circuit breakers) and the latency each engine has shown on the route.
Tables of both engines make a hybrid query. The reason travels to FlightInfo
`app_metadata` and `explain`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from flight_server.engines.breaker import CircuitBreaker
from flight_server.errors import InvalidArgument, Unavailable

ENGINE_ORDER = ("duckdb", "postgres")


@dataclass(frozen=True)
class Route:
    engine: str  # "duckdb", "postgres" or "hybrid"
    reason: str
    fallback: bool = False


def query_shape(tree: Any) -> str:
    """'analytical' (aggregates, grouping, windows, unfiltered scans) or 'lookup'."""
    if tree is None:
        return "analytical"
    if any(isinstance(n, exp.AggFunc | exp.Group | exp.Window | exp.Distinct) for n in tree.walk()):
        return "analytical"
    for where in tree.find_all(exp.Where):
        for eq in where.find_all(exp.EQ):
            column = eq.left if isinstance(eq.left, exp.Column) else eq.right
            if isinstance(column, exp.Column) and (column.name == "id" or column.name.endswith("_id")):
                return "lookup"
    return "analytical"


class TableRegistry:
    """Table name -> the engines that hold it, refreshed from the engines on a miss."""

    def __init__(self, sources: dict[str, Callable[[], dict[str, str]]]) -> None:
        self._sources = sources
        self._owners: dict[str, list[str]] = {}
        self.refresh()

    def refresh(self) -> None:
        owners: dict[str, list[str]] = {}
        for engine, list_tables in self._sources.items():
            for table in list_tables():
                owners.setdefault(table, []).append(engine)
        self._owners = owners

    def engines(self, table: str) -> list[str]:
        name = table.lower()
        if name not in self._owners:
            self.refresh()
        return list(self._owners.get(name, []))

    def owner(self, table: str) -> str | None:
        engines = self.engines(table)
        return engines[0] if engines else None

    def has(self, table: str) -> bool:
        return bool(self.engines(table))

    def tables(self) -> dict[str, str]:
        """Each table with its first (preferred) engine."""
        return {name: engines[0] for name, engines in self._owners.items()}


class LatencyHistory:
    """Exponentially weighted latency per (route, engine), for routing feedback."""

    def __init__(self, alpha: float = 0.2, min_samples: int = 5) -> None:
        self._alpha = alpha
        self._min = min_samples
        self._lock = threading.Lock()
        self._ms: dict[tuple[str, str], tuple[float, int]] = {}

    def record(self, route: str, engine: str, ms: float) -> None:
        with self._lock:
            old, n = self._ms.get((route, engine), (ms, 0))
            self._ms[(route, engine)] = (old + self._alpha * (ms - old), n + 1)

    def get(self, route: str, engine: str) -> float | None:
        with self._lock:
            value, n = self._ms.get((route, engine), (0.0, 0))
        return value if n >= self._min else None

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            out: dict[str, dict[str, float]] = {}
            for (route, engine), (ms, _n) in self._ms.items():
                out.setdefault(route, {})[engine] = round(ms, 3)
            return out


class Router:
    """Chooses the engine for a query among the engines that are configured."""

    def __init__(
        self,
        registry: TableRegistry,
        engines: Iterable[str],
        breakers: dict[str, CircuitBreaker] | None = None,
    ) -> None:
        self.registry = registry
        self.engines = frozenset(engines)
        self.breakers = breakers or {}
        self.latency = LatencyHistory()
        self._decisions: Counter[tuple[str, str, bool]] = Counter()
        self._decisions_lock = threading.Lock()

    def available(self, engine: str) -> bool:
        breaker = self.breakers.get(engine)
        return breaker is None or breaker.state != "open"

    def route(
        self,
        tables: Iterable[str],
        hint: str = "auto",
        declared: str | None = None,
        tree: Any = None,
        label: str = "sql",
    ) -> Route:
        route = self._route(tables, hint, declared, tree, label)
        with self._decisions_lock:
            self._decisions[(label, route.engine, route.fallback)] += 1
        return route

    def decisions(self) -> dict[tuple[str, str, bool], int]:
        """Routing decisions so far: (route, engine, fallback) -> count."""
        with self._decisions_lock:
            return dict(self._decisions)

    def _route(self, tables: Iterable[str], hint: str, declared: str | None, tree: Any, label: str) -> Route:
        tables = sorted(set(tables))
        for needed in ENGINE_ORDER if declared == "hybrid" else (declared,) if declared else ():
            self._require(needed)
        holders: dict[str, list[str]] = {}
        for table in tables:
            engines = [e for e in self.registry.engines(table) if e in self.engines]
            if not engines:
                raise InvalidArgument(f"unknown table '{table}'; no engine has it")
            holders[table] = engines
        complete = [e for e in ENGINE_ORDER if e in self.engines and all(e in h for h in holders.values())]
        if hint != "auto":
            self._require(hint)
            if hint not in complete:
                foreign = sorted(t for t, h in holders.items() if hint not in h)
                raise InvalidArgument(
                    f"engine hint '{hint}' cannot run this query: {', '.join(foreign)} not in {hint}; use 'auto'"
                )
            self._require_available(hint)
            return Route(hint, f"engine hint '{hint}' from the request")
        if declared == "hybrid":
            # a hybrid named query stays hybrid even when copies of its tables would let
            # one engine run it alone: its SQL is written for DuckDB over both engines
            return self._hybrid(holders)
        if declared in ("duckdb", "postgres") and declared in complete:
            complete = [declared] + [e for e in complete if e != declared]
            why = f"named query declares engine {declared}"
        elif not complete:
            return self._hybrid(holders)
        else:
            shape = query_shape(tree)
            preferred = "postgres" if shape == "lookup" else "duckdb"
            complete = sorted(complete, key=lambda e: e != preferred)
            why = f"{shape} query; every table read ({', '.join(tables) or 'none'}) is in {complete[0]}"
            complete, why = self._feedback(label, complete, why)
        for i, engine in enumerate(complete):
            if self.available(engine):
                if i == 0:
                    return Route(engine, why)
                return Route(engine, f"{why}; {complete[0]} unavailable, falling back to {engine}", fallback=True)
        self._require_available(complete[0])
        raise AssertionError("unreachable")

    def _feedback(self, label: str, complete: list[str], why: str) -> tuple[list[str], str]:
        if len(complete) < 2:
            return complete, why
        first, second = complete[0], complete[1]
        ms_first, ms_second = self.latency.get(label, first), self.latency.get(label, second)
        if ms_first is not None and ms_second is not None and ms_second * 2 < ms_first:
            reason = f"{why}; but {second} answered this route in {ms_second:.1f} ms vs {ms_first:.1f} ms"
            return [second, first, *complete[2:]], reason
        return complete, why

    def _hybrid(self, holders: dict[str, list[str]]) -> Route:
        for engine in ("duckdb", "postgres"):
            self._require(engine)
            self._require_available(engine)
        parts = ", ".join(f"{t} ({h[0]})" for t, h in sorted(holders.items()))
        return Route("hybrid", f"reads tables of both engines: {parts}; PostgreSQL rows are joined in DuckDB")

    def _require(self, engine: str) -> None:
        if engine not in self.engines:
            raise Unavailable(
                f"engine '{engine}' is not configured on this server; set FLIGHT_{engine.upper()}__URI "
                "or use engine 'auto'"
            )

    def _require_available(self, engine: str) -> None:
        if not self.available(engine):
            retry = self.breakers[engine].retry_in_s()
            raise Unavailable(f"engine '{engine}' is unavailable (circuit breaker open); retrying it in {retry:.1f} s")
