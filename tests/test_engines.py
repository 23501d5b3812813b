"""Behaviour every engine shares, run once against each: DuckDB, PostgreSQL and hybrid.

The engines are the real ones of the session's `hybrid_server` (DuckDB with demo data,
PostgreSQL in a fresh database with the matching OLTP rows). Every case is written in
the server's one SQL dialect, DuckDB's; the PostgreSQL engine translates it.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pytest

from flight_server.context import RunningQueries
from flight_server.engines.base import Engine, Params
from flight_server.errors import Cancelled, InvalidArgument, TimedOut

from support.servers import ServerHandle
from support.waiting import wait_for

pytestmark = pytest.mark.postgres

PROJECTS = ["proj-001", "proj-003"]


@dataclass(frozen=True)
class Case:
    """SQL for one engine: `rows` selects PROJECTS as column `id`; `slow` runs for many seconds."""

    rows: str
    slow: str
    details: tuple[str, ...]  # the keys of plan_details


CASES = {
    "duckdb": Case(
        rows="SELECT DISTINCT project_id AS id FROM cdx_records WHERE project_id IN ($1, $2) ORDER BY id",
        slow="SELECT count(*) AS n FROM cdx_records a, cdx_records b WHERE length(a.id || b.id) = 7",
        details=(),
    ),
    "postgres": Case(
        rows="SELECT id FROM projects WHERE id IN ($1, $2) ORDER BY id",
        slow="SELECT count(*) AS n FROM projects AS p, generate_series(1, 2000000000) AS g",
        details=("postgres_sql", "postgres_params"),
    ),
    "hybrid": Case(
        rows=(
            "SELECT DISTINCT p.id FROM projects p JOIN cdx_records c ON c.project_id = p.id "
            "WHERE p.id IN ($1, $2) ORDER BY p.id"
        ),
        slow=(
            "SELECT count(*) AS n FROM projects p, cdx_records a, cdx_records b WHERE length(p.id || a.id || b.id) = 7"
        ),
        details=("postgres_fetches", "duckdb_sql"),
    ),
}


@pytest.fixture(params=sorted(CASES))
def engine(request: pytest.FixtureRequest, hybrid_server: ServerHandle) -> Engine:
    name: str = request.param
    engines = hybrid_server.app.executor.engines
    return engines[name]


@pytest.fixture
def case(engine: Engine) -> Case:
    return CASES[engine.name]


@pytest.fixture
def running(hybrid_server: ServerHandle) -> RunningQueries:
    return hybrid_server.app.running


def _query_id() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def _run(engine: Engine, sql: str, params: Params, **kwargs: Any) -> pa.Table:
    result = engine.execute(sql, params, query_id=kwargs.pop("query_id", _query_id()), **kwargs)
    try:
        return result.reader.read_all()
    except BaseException as exc:
        raise result.translate(exc) from None
    finally:
        result.close()


def test_engine_execute_streams_the_expected_rows(engine: Engine, case: Case) -> None:
    result = engine.execute(case.rows, PROJECTS, query_id=_query_id())
    try:
        assert isinstance(result.reader, pa.RecordBatchReader)
        table = result.reader.read_all()
    finally:
        result.close()
    assert table.column("id").to_pylist() == PROJECTS


def test_engine_schema_describes_without_running(engine: Engine, case: Case) -> None:
    schema = engine.schema(case.rows, PROJECTS)
    assert schema.names == ["id"] and pa.types.is_string(schema.field("id").type)
    assert engine.schema(case.slow, None).names == ["n"]  # would run for many seconds


def test_engine_explain_gives_a_plan_and_its_details(engine: Engine, case: Case) -> None:
    assert engine.explain(case.rows, PROJECTS).strip()
    assert tuple(engine.plan_details(case.rows, PROJECTS)) == case.details


def test_engine_deadline_stops_the_query(engine: Engine, case: Case) -> None:
    with pytest.raises(TimedOut, match="exceeded its deadline"):
        _run(engine, case.slow, None, deadline_s=0.3)


def test_engine_cancel_stops_the_query(engine: Engine, case: Case, running: RunningQueries) -> None:
    query_id = _query_id()
    outcome: list[BaseException | pa.Table] = []

    def run() -> None:
        try:
            outcome.append(_run(engine, case.slow, None, query_id=query_id, deadline_s=60))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: query_id in running, 10, "the query never started")  # the DuckDB join, after any fetch
    assert engine.cancel(query_id)  # even when it lands before the engine starts, the watchdog repeats it
    thread.join(timeout=30)
    assert not thread.is_alive()
    [error] = outcome
    assert isinstance(error, Cancelled), error
    assert not engine.cancel(query_id)  # no longer running


def test_engine_bad_sql_is_invalid_argument(engine: Engine, case: Case) -> None:
    with pytest.raises(InvalidArgument, match="nope"):
        _run(engine, case.rows.replace("SELECT DISTINCT", "SELECT").replace("SELECT ", "SELECT nope, ", 1), PROJECTS)
