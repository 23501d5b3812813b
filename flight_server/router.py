"""Routing: which engine runs a query, and why.

A `TableRegistry` says which engine owns each table. The router decides from the
tables a query reads, the named query's declared engine and the client's engine hint,
and records its reason; the reason travels to FlightInfo `app_metadata` and `explain`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flight_server.errors import InvalidArgument, Unavailable


@dataclass(frozen=True)
class Route:
    engine: str
    reason: str


class TableRegistry:
    """Table name -> owning engine, refreshed from the engines on a miss."""

    def __init__(self, sources: dict[str, Callable[[], dict[str, str]]]) -> None:
        self._sources = sources
        self._owner: dict[str, str] = {}
        self.refresh()

    def refresh(self) -> None:
        owner: dict[str, str] = {}
        for engine, list_tables in self._sources.items():
            for table in list_tables():
                owner.setdefault(table, engine)
        self._owner = owner

    def owner(self, table: str) -> str | None:
        name = table.lower()
        if name not in self._owner:
            self.refresh()
        return self._owner.get(name)

    def has(self, table: str) -> bool:
        return self.owner(table) is not None

    def tables(self) -> dict[str, str]:
        return dict(self._owner)


class Router:
    """Chooses the engine for a query among the engines that are configured."""

    def __init__(self, registry: TableRegistry, engines: Iterable[str]) -> None:
        self.registry = registry
        self.engines = frozenset(engines)

    def route(self, tables: Iterable[str], hint: str = "auto", declared: str | None = None) -> Route:
        tables = list(tables)
        owners: dict[str, str] = {}
        for table in tables:
            owner = self.registry.owner(table)
            if owner is None:
                raise InvalidArgument(f"unknown table '{table}'; no engine has it")
            owners[table] = owner
        needed = set(owners.values()) | ({declared} if declared else set())
        if hint != "auto":
            self._require(hint)
            foreign = sorted(t for t, owner in owners.items() if owner != hint)
            if foreign:
                raise InvalidArgument(
                    f"engine hint '{hint}' cannot run this query: {', '.join(foreign)} "
                    f"live in {owners[foreign[0]]}; use engine 'auto'"
                )
            return Route(hint, f"engine hint '{hint}' from the request")
        if declared and declared != "hybrid":
            self._require(declared)
            return Route(declared, f"named query declares engine {declared}")
        if len(needed - {"hybrid"}) > 1:
            raise Unavailable("queries joining tables of several engines need the hybrid router")
        engine = next(iter(needed - {"hybrid"}), "duckdb")
        self._require(engine)
        if not tables:
            return Route(engine, "reads no table; runs on the embedded engine")
        return Route(engine, f"every table read ({', '.join(sorted(tables))}) lives in {engine}")

    def _require(self, engine: str) -> None:
        if engine not in self.engines:
            raise Unavailable(
                f"engine '{engine}' is not configured on this server; "
                f"set FLIGHT_{engine.upper()}__URI or use engine 'auto'"
            )
