"""Reading OLTP tables from their DuckDB replicas instead of PostgreSQL.

After the router has chosen PostgreSQL (or a hybrid of both engines) for a query, it
runs on DuckDB instead when every PostgreSQL table it reads has a replica whose
staleness is within the caller's `max_staleness_s` (or `FLIGHT_SYNC__MAX_STALENESS_S`)
and the query is analytical: lookups by key, an explicit engine hint `postgres`, a
bound of 0 and queries that name a secret column (which replicas never hold, see
flight_server.security.access) stay on PostgreSQL. The hint
`duckdb` asks for the replicas whatever the query (within a bound, when one is given).
When
PostgreSQL is unavailable, a query that did not ask for a bound is answered from the
replicas however stale, and says so; one that asked gets UNAVAILABLE instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp

from flight_server.errors import InvalidArgument, Unavailable
from flight_server.router import TableRegistry, query_shape
from flight_server.security.sqltables import table_references
from flight_server.sync.replica import SCHEMA

if TYPE_CHECKING:
    from flight_server.commands import Command
    from flight_server.sync.service import SyncService


@dataclass(frozen=True)
class ReplicaChoice:
    sql: str
    tables: tuple[str, ...]
    staleness_s: float
    reason: str


@functools.lru_cache(maxsize=2048)
def to_replicas(sql: str, tables: tuple[str, ...]) -> str:
    """`sql` with every reference to these tables pointed at their replicas."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    for table in table_references(tree):
        if not table.db and table.name.lower() in tables:
            table.set("db", exp.to_identifier(SCHEMA))
    return str(tree.sql(dialect="duckdb"))


def _names_secret(tree: Any, secret: frozenset[str]) -> bool:
    return any(c.name.lower() in secret for c in tree.find_all(exp.Column))


class ReplicaRouter:
    """Decides whether a PostgreSQL or hybrid plan may read replicas instead."""

    def __init__(
        self, sync: SyncService, registry: TableRegistry, default_bound_s: float, secret: frozenset[str] = frozenset()
    ) -> None:
        self.sync = sync
        self._registry = registry
        self._default_bound_s = default_bound_s
        self._secret = secret  # column names no replica holds

    def postgres_tables(self, engine: str, tables: tuple[str, ...]) -> tuple[str, ...]:
        """The tables of a plan that only PostgreSQL holds."""
        if engine == "postgres":
            return tables
        return tuple(t for t in tables if self._registry.engines(t) == ["postgres"])

    def choose(
        self,
        command: Command,
        engine: str,
        sql: str,
        tables: tuple[str, ...],
        tree: Any,
        postgres_down: Unavailable | None = None,
    ) -> ReplicaChoice | None:
        """A replica plan, or None to stay on the routed engine.

        `postgres_down` is the error the router gave when PostgreSQL is unavailable:
        then a replica of any staleness answers unless the caller set a bound; with a
        bound it cannot meet, the error is raised.
        """
        if command.engine == "postgres" or engine not in ("postgres", "hybrid"):
            return None
        explicit = command.max_staleness_s is not None
        bound = command.max_staleness_s if command.max_staleness_s is not None else self._default_bound_s
        forced = command.engine == "duckdb"  # the caller asks for the replicas
        wanted = self.postgres_tables(engine, tables)
        if not wanted or (_names_secret(tree, self._secret) and not forced):
            return None
        staleness = [self.sync.staleness(t) for t in wanted]
        missing = [t for t, s in zip(wanted, staleness, strict=True) if s is None]
        if missing and forced:
            raise InvalidArgument(f"engine hint 'duckdb': {missing[0]} has no DuckDB replica now; use 'auto'")
        if missing:
            return None
        worst = max(s for s in staleness if s is not None)
        if postgres_down is not None or forced:
            said = "PostgreSQL unavailable" if postgres_down is not None else "engine hint 'duckdb'"
            if explicit and worst > bound:
                raise Unavailable(
                    f"{postgres_down or said}; the replicas are {worst:.1f} s stale, "
                    f"over the max_staleness_s {bound:g} asked for"
                ) from None
            reason = f"{said}; answered from DuckDB replicas {worst:.1f} s stale"
        elif bound <= 0 or worst > bound or query_shape(tree) == "lookup":
            return None
        else:
            reason = (
                f"analytical query over {', '.join(wanted)}: DuckDB replicas {worst:.2f} s stale, "
                f"within max_staleness_s {bound:g}"
            )
        return ReplicaChoice(to_replicas(sql, tuple(sorted(wanted))), wanted, worst, reason)
