"""From a decoded command to a `Plan`: the final SQL, its parameters, the tables read
and the engine the router chose.

A `Plan` is built once per request and never changed: routing onto the DuckDB replicas
and scoping to the caller's projects each return a new plan (`dataclasses.replace`).
Planning reads the caller and the deadline from the request and writes nothing back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import sqlglot

from flight_server.catalog import Catalog, NamedQuery
from flight_server.commands import Command
from flight_server.context import Caller
from flight_server.engines.base import Engine
from flight_server.errors import NotFound, PermissionDenied, Unavailable
from flight_server.replicas import ReplicaChoice, ReplicaRouter
from flight_server.router import Route, Router
from flight_server.security.access import AccessPolicy
from flight_server.security.middleware import require
from flight_server.security.scoping import PROJECT_COLUMNS, project_column, scope_sql
from flight_server.security.sqlguard import check_read_only

RAW_SQL_TTL_S = 300  # raw SQL and whole datasets; data versions keep them correct


@dataclass(frozen=True, kw_only=True)
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


class QueryPlanner:
    """Resolves commands (named query, raw SQL or dataset) into plans: SQL policy, routing,
    replica choice and scoping to what the caller may see."""

    def __init__(
        self,
        catalog: Catalog,
        engines: Mapping[str, Engine],
        router: Router,
        syntax_error: Callable[[str], str | None] | None = None,
        access: AccessPolicy | None = None,
        max_generated: int | None = None,
    ) -> None:
        self.catalog = catalog
        self.engines = engines
        self.router = router
        self.access = access or AccessPolicy()
        self.max_generated = max_generated  # see flight_server.security.sqlsize
        self._syntax_error = syntax_error
        self._scoped_cache: tuple[frozenset[str], dict[str, str]] | None = None
        self._named_trees = {q.name: sqlglot.parse_one(q.sql, read="duckdb") for q in catalog}
        self.replicas: ReplicaRouter | None = None  # set when PostgreSQL is replicated into DuckDB

    def route_named(self, query: NamedQuery) -> Route:
        """The router's choice for a named query as declared (for checking the catalogue)."""
        return self.router.route(
            query.tables, declared=query.engine, tree=self._named_trees[query.name], label=query.name
        )

    def plan(
        self,
        command: Command,
        caller: Caller,
        query_id: str,
        deadline_s: float | None = None,
        postgres_down: Unavailable | None = None,
    ) -> Plan:
        """The plan of a command; `postgres_down`: PostgreSQL just failed under this very request."""
        plan = self._plan(command, caller, query_id)
        unavailable = plan.unavailable
        if postgres_down is not None and plan.engine in ("postgres", "hybrid"):
            unavailable = unavailable or postgres_down
        plan = replace(plan, unavailable=unavailable, deadline_s=deadline_s)
        return self._restrict(self._use_replicas(plan), caller)

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

    def _use_replicas(self, plan: Plan) -> Plan:
        """The plan pointed at DuckDB replicas when they are fresh enough (flight_server.replicas)."""
        if self.replicas is None:
            return plan
        choice = self.replicas.choose(plan.command, plan.engine, plan.sql, plan.tables, plan.tree, plan.unavailable)
        if choice is None:
            if plan.unavailable is not None:
                raise plan.unavailable
            return plan
        return replace(plan, engine="duckdb", sql=choice.sql, reason=choice.reason, replica=choice)

    def _restrict(self, plan: Plan, caller: Caller) -> Plan:
        """The plan with its SQL rewritten so that it reads only what the caller may see.

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
        if not (any(t in scoped for t in plan.tables) or secret):
            return plan
        admin = caller.role == "admin"
        sql = scope_sql(plan.sql, projects, scoped, columns=columns, secret=secret, secrets_allowed=admin)
        reason = plan.reason if projects is None else f"{plan.reason}; scoped to {len(projects)} project(s)"
        return replace(plan, sql=sql, reason=reason)

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
                column = project_column(table, cols)
                if column is not None:
                    tables.setdefault(table, column)
        self._scoped_cache = (known, tables)
        return tables

    def _plan(self, command: Command, caller: Caller, query_id: str) -> Plan:
        if command.kind == "query":
            require(caller, "query", "run named queries")
            named = self.catalog.get(command.target)
            params: Any = named.bind(command.params if isinstance(command.params, dict) else {})
            tree = self._named_trees[named.name]
            route, down = self._route(command, named.tables, named.engine, tree, named.name)
            return Plan(
                command=command,
                label=named.name,
                engine=route.engine,
                reason=route.reason,
                sql=named.sql,
                params=params,
                tables=named.tables,
                ttl_s=named.ttl_s,
                query_id=query_id,
                named=named,
                tree=tree,
                unavailable=down,
            )
        require(caller, "sql", "run raw SQL or read whole datasets")
        if command.kind == "dataset":
            name = command.target.lower()
            if not self.router.registry.has(name):
                raise NotFound(f"unknown dataset '{command.target:.80}'; ListFlights shows the datasets")
            route = self.router.route([name], command.engine, label=name)
            return Plan(
                command=command,
                label=name,
                engine=route.engine,
                reason=route.reason,
                sql=f'SELECT * FROM "{name}"',
                params=None,
                tables=(name,),
                ttl_s=RAW_SQL_TTL_S,
                query_id=query_id,
            )
        checked = check_read_only(
            command.target,
            self.router.registry.has,
            self._syntax_error,
            max_generated=self.max_generated,
            params=command.params or None,
        )
        route, down = self._route(command, tuple(checked.tables), tree=checked.tree)
        return Plan(
            command=command,
            label="sql",
            engine=route.engine,
            reason=route.reason,
            sql=checked.sql,
            params=command.params if command.params else None,
            tables=tuple(checked.tables),
            ttl_s=RAW_SQL_TTL_S,
            query_id=query_id,
            tree=checked.tree,
            unavailable=down,
        )
