"""Hybrid queries: PostgreSQL tables fetched as Arrow, then joined in DuckDB.

The query is qualified against the columns of both engines (sqlglot), then every
reference to a PostgreSQL-only table becomes a fetch of just the columns the query uses,
with every filter that can safely run in PostgreSQL pushed down (WHERE conjuncts that
touch only that table, on a side of the join that is not null-extended). The fetched
Arrow tables are registered in the DuckDB cursor under private names and the rewritten
query runs in DuckDB, which still applies every original filter. A PostgreSQL table the
scopes do not list (under a VALUES root, the source of a PIVOT) is fetched whole.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope

from flight_server.engines.base import Params, QueryResult
from flight_server.engines.duckdb import DuckDBEngine
from flight_server.engines.postgres import PostgresEngine
from flight_server.engines.postgres_dialect import bind_for_postgres
from flight_server.errors import InvalidArgument
from flight_server.security.sqltables import table_references


@dataclass
class Fetch:
    """One PostgreSQL read: a table's needed columns, with pushed-down filters."""

    name: str  # the private name the result is registered under in DuckDB
    table: str
    columns: list[str]
    sql: str
    params: list[Any]
    pushed: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"table": self.table, "columns": self.columns, "sql": self.sql, "params": self.params,
                "pushed_filters": self.pushed}  # fmt: skip


@dataclass
class HybridPlan:
    duckdb_sql: str
    fetches: list[Fetch]


def _conjuncts(condition: Any) -> list[exp.Expression]:
    if isinstance(condition, exp.And):
        return _conjuncts(condition.left) + _conjuncts(condition.right)
    if isinstance(condition, exp.Paren):
        return _conjuncts(condition.this)
    return [condition]


def _null_supplying(scope: Scope, table: exp.Table) -> bool:
    """Is this table on a side of an outer join whose rows may be NULL-extended?"""
    select = scope.expression
    joins = select.args.get("joins") or []
    join = table.parent if isinstance(table.parent, exp.Join) else None
    if join is not None:
        return join.side in ("LEFT", "FULL") or join.kind == "FULL"
    return any(j.side in ("RIGHT", "FULL") for j in joins)


def _pushable(conjunct: exp.Expression, alias: str) -> bool:
    columns = list(conjunct.find_all(exp.Column))
    if not columns or any(c.table != alias for c in columns):
        return False
    forbidden = (exp.Subquery, exp.Select, exp.AggFunc, exp.Window)
    return not any(isinstance(node, forbidden) for node in conjunct.walk())


class HybridPlanner:
    def __init__(self, columns: dict[str, dict[str, str]], postgres_tables: set[str]) -> None:
        self._schema: dict[str, object] = dict(columns)
        self._postgres = postgres_tables

    def plan(self, sql: str, params: Params) -> HybridPlan:
        try:
            tree = sqlglot.parse_one(sql, read="duckdb")
            tree = qualify(tree, schema=self._schema, dialect="duckdb", validate_qualify_columns=False)
        except (OptimizeError, SqlglotError) as exc:
            raise InvalidArgument(f"cannot plan the query across engines: {str(exc).splitlines()[0]}") from None
        fetches: list[Fetch] = []
        for scope in traverse_scope(tree):
            for alias, source in list(scope.sources.items()):
                if isinstance(source, exp.Table) and source.name.lower() in self._postgres and not source.db:
                    fetches.append(self._fetch(scope, alias, source, params, len(fetches)))
        # tables where sqlglot's scopes list no source (a VALUES root, PIVOT/UNPIVOT): whole
        for table in table_references(tree):
            if table.name.lower() in self._postgres and not table.db:
                fetches.append(self._fetch_whole(table, len(fetches)))
        return HybridPlan(tree.sql(dialect="duckdb"), fetches)

    def _fetch_whole(self, table: exp.Table, index: int) -> Fetch:
        """Every column of a table, unfiltered (DuckDB applies the query's own filters)."""
        name = table.name.lower()
        columns = list(self._schema.get(name, {}))  # type: ignore[call-overload]
        query = exp.select(*[exp.column(c, quoted=True) for c in columns]).from_(
            exp.Table(this=exp.to_identifier(name, quoted=True), db=exp.to_identifier("public"))
        )
        private = f"__pg_{index}_{name}"
        replacement = table.copy()  # keeps its PIVOT, TABLESAMPLE and other clauses
        replacement.set("alias", table.args.get("alias") or exp.TableAlias(this=table.this.copy()))
        replacement.set("this", exp.to_identifier(private, quoted=True))
        table.replace(replacement)
        return Fetch(private, name, columns, query.sql(dialect="postgres"), [])

    def _fetch(self, scope: Scope, alias: str, table: exp.Table, params: Params, index: int) -> Fetch:
        name = table.name.lower()
        known = list(self._schema.get(name, {}))  # type: ignore[call-overload]
        used = {c.name for c in scope.expression.find_all(exp.Column) if c.table == alias}
        columns = [c for c in known if c in used] or known[:1]
        values: list[Any] = []
        pushed: list[exp.Expression] = []
        where = scope.expression.args.get("where") if isinstance(scope.expression, exp.Select) else None
        if where is not None and not _null_supplying(scope, table):
            pushed = [bind_for_postgres(c, params, values) for c in _conjuncts(where.this) if _pushable(c, alias)]
        query = exp.select(*[exp.column(c, quoted=True) for c in columns]).from_(
            exp.Table(this=exp.to_identifier(name, quoted=True), db=exp.to_identifier("public"))
        )
        for condition in pushed:
            query = query.where(condition)
        private = f"__pg_{index}_{name}"
        table.replace(exp.Table(this=exp.to_identifier(private, quoted=True), alias=exp.TableAlias(
            this=exp.to_identifier(alias, quoted=True))))  # fmt: skip
        return Fetch(private, name, columns, query.sql(dialect="postgres"), values,
                     [c.sql(dialect="postgres") for c in pushed])  # fmt: skip


class HybridEngine:
    """The `hybrid` engine: PostgreSQL fetches first, then the join in DuckDB.

    It owns neither engine, so closing it closes nothing. Its planner knows the columns
    of both engines as they were when it was built (on first use); `refresh_tables`
    builds it again.
    """

    name = "hybrid"

    def __init__(self, duckdb: DuckDBEngine, postgres: PostgresEngine) -> None:
        self._duckdb = duckdb
        self._postgres = postgres
        self._planner: HybridPlanner | None = None
        self._columns: dict[str, dict[str, str]] = {}
        self._fetching: dict[str, str] = {}  # query id -> id of its PostgreSQL fetch running now
        self._lock = threading.Lock()

    def plan(self, sql: str, params: Params) -> HybridPlan:
        if self._planner is None:
            self.refresh_tables()
        assert self._planner is not None
        return self._planner.plan(sql, params)

    # -- Engine interface ----------------------------------------------------------------

    def execute(self, sql: str, params: Params, *, query_id: str, deadline_s: float | None = None) -> QueryResult:
        plan = self.plan(sql, params)
        relations: dict[str, pa.Table] = {}
        for i, fetch in enumerate(plan.fetches):
            fetch_id = f"{query_id}-pg{i}"
            with self._lock:
                self._fetching[query_id] = fetch_id
            try:
                result = self._postgres.execute_native(
                    fetch.sql, fetch.params, query_id=fetch_id, deadline_s=deadline_s
                )
                try:
                    relations[fetch.name] = result.reader.read_all()
                except BaseException as exc:  # noqa: BLE001 - every driver error is translated and re-raised
                    raise result.translate(exc) from None
                finally:
                    result.close()
            finally:
                with self._lock:
                    self._fetching.pop(query_id, None)
        return self._duckdb.execute(
            plan.duckdb_sql, params, query_id=query_id, relations=relations, deadline_s=deadline_s
        )

    def _empty_relations(self, plan: HybridPlan) -> dict[str, pa.Table]:
        return {f.name: self._postgres.schema_native(f.sql, f.params).empty_table() for f in plan.fetches}

    def schema(
        self, sql: str, params: Params, *, query_id: str | None = None, deadline_s: float | None = None
    ) -> pa.Schema:
        plan = self.plan(sql, params)
        relations = self._empty_relations(plan)
        return self._duckdb.schema(plan.duckdb_sql, params, relations, query_id=query_id, deadline_s=deadline_s)

    def explain(self, sql: str, params: Params) -> str:
        plan = self.plan(sql, params)
        return self._duckdb.explain(plan.duckdb_sql, params, relations=self._empty_relations(plan))

    def plan_details(self, sql: str, params: Params) -> dict[str, Any]:
        """The PostgreSQL fetches (with their pushed-down filters) and the DuckDB query over them."""
        plan = self.plan(sql, params)
        return {"postgres_fetches": [f.describe() for f in plan.fetches], "duckdb_sql": plan.duckdb_sql}

    def tables(self) -> dict[str, str]:
        """The tables of both engines (DuckDB's kind wins for a table both hold)."""
        return {**self._postgres.tables(), **self._duckdb.tables()}

    def refresh_tables(self) -> dict[str, str]:
        """Learn both engines' columns again (PostgreSQL's last known while it is down)."""
        pg_columns = self._postgres.columns()
        columns = {**pg_columns, **self._duckdb.columns()}
        postgres_only = set(pg_columns) - set(self._duckdb.tables())
        self._planner, self._columns = HybridPlanner(columns, postgres_only), columns
        return self.tables()

    def columns(self) -> dict[str, dict[str, str]]:
        """The columns the planner knows: DuckDB's, and PostgreSQL's for the tables DuckDB lacks."""
        if self._planner is None:
            self.refresh_tables()
        return dict(self._columns)

    def health(self) -> dict[str, Any]:
        """Both engines' checks; raises when either is down."""
        return {
            "status": "ok",
            "duckdb": self._duckdb.health()["status"],
            "postgres": self._postgres.health()["status"],
        }

    def cancel(self, query_id: str) -> bool:
        """Interrupt the query's PostgreSQL fetch, or its DuckDB join, whichever runs now."""
        with self._lock:
            fetch_id = self._fetching.get(query_id)
        if fetch_id is not None and self._postgres.cancel(fetch_id):
            return True
        return self._duckdb.cancel(query_id)

    def close(self) -> None:
        """Nothing to release: the two engines are closed by whoever built them."""
