"""Attacks on the SQL policy through the public interface: Flight, Flight SQL, PostgreSQL.

The server here connects to PostgreSQL as the schema owner only (no reader URI), so
what keeps secrets and other projects' rows out is the policy, not the grants.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_server.settings import AuthSettings, CacheSettings, LimitSettings, PostgresSettings, SyncSettings

from support.flightsql import connect
from support.servers import ServerHandle, create_database, drop_database, start_server, stop_server
from support.tokens import SECRET, get, options, token

pytestmark = pytest.mark.postgres

OWN = "proj-001"


@pytest.fixture(scope="module")
def owner_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    database = create_database()
    handle = start_server(
        tmp_path_factory.mktemp("policy"),
        rows=20_000,
        auth=AuthSettings(jwt_secret=SECRET),
        cache=CacheSettings(warm_top_n=0),
        postgres=PostgresSettings(uri=f"postgresql://postgres@127.0.0.1:5432/{database}"),
        sync=SyncSettings(enabled=False),
    )
    yield handle
    stop_server(handle)
    drop_database(database)


def _analyst() -> str:
    return token("analyst", [OWN])


def _info(handle: ServerHandle, command: dict[str, Any], bearer: str) -> dict[str, Any]:
    descriptor = flight.FlightDescriptor.for_command(json.dumps(command).encode())
    info = handle.client.get_flight_info(descriptor, options(bearer))
    return dict(json.loads(info.app_metadata))


def _scalar(handle: ServerHandle, sql: str, bearer: str) -> Any:
    return get(handle, {"sql": sql, "cache": "bypass"}, bearer).column(0)[0].as_py()


# -- item 1: VALUES, PIVOT, UNPIVOT, LATERAL are scoped ---------------------------------------


@pytest.mark.parametrize(
    ("attack", "truth"),
    [
        ("VALUES ((SELECT count(*) FROM cdx_records))", f"SELECT count(*) FROM cdx_records WHERE project_id = '{OWN}'"),
        (
            "SELECT count(*) FROM (UNPIVOT cdx_records ON status_code INTO NAME k VALUE v)",
            f"SELECT count(status_code) FROM cdx_records WHERE project_id = '{OWN}'",
        ),
        (
            "SELECT count(*) FROM (SELECT 1 AS x) o, LATERAL (SELECT * FROM cdx_records WHERE o.x = 1) c",
            f"SELECT count(*) FROM cdx_records WHERE project_id = '{OWN}'",
        ),
    ],
)
def test_sqlpolicy_values_unpivot_lateral_count_only_own_rows(
    owner_server: ServerHandle, attack: str, truth: str
) -> None:
    expected = _scalar(owner_server, truth, token("admin"))
    assert _scalar(owner_server, attack, _analyst()) == expected
    assert _scalar(owner_server, attack, token("admin")) > expected  # the attack reads more when allowed to


def test_sqlpolicy_pivot_shows_only_own_project(owner_server: ServerHandle) -> None:
    attack = "SELECT * FROM (PIVOT cdx_records ON project_id USING count(*) GROUP BY status_code)"
    assert set(get(owner_server, {"sql": attack}, _analyst()).column_names) == {"status_code", OWN}
    assert len(get(owner_server, {"sql": attack}, token("admin")).column_names) > 2
    root = get(owner_server, {"sql": "PIVOT cdx_records ON project_id USING count(*)"}, _analyst())
    assert [c for c in root.column_names if c.startswith("proj-")] == [OWN]


def test_sqlpolicy_flightsql_statements_are_scoped(owner_server: ServerHandle) -> None:
    header = {"adbc.flight.sql.authorization_header": f"Bearer {_analyst()}"}
    expected = _scalar(owner_server, f"SELECT count(*) FROM cdx_records WHERE project_id = '{OWN}'", token("admin"))
    with connect(owner_server, **header) as conn, conn.cursor() as cur:
        cur.execute("VALUES ((SELECT count(*) FROM cdx_records))")
        assert cur.fetchone()[0] == expected
        cur.execute("SELECT * FROM (PIVOT cdx_records ON project_id USING count(*) GROUP BY status_code)")
        assert {d[0] for d in cur.description} == {"status_code", OWN}
        cur.execute("SELECT count(*) FROM (UNPIVOT cdx_records ON status_code INTO NAME k VALUE v)")
        assert cur.fetchone()[0] == expected
        cur.execute("VALUES ((SELECT count(*) FROM domains))")
        assert cur.fetchone()[0] == _own_domains(owner_server)


def _own_domains(handle: ServerHandle) -> int:
    return int(_scalar(handle, f"SELECT count(*) FROM domains WHERE project_id = '{OWN}'", token("admin")))


def test_sqlpolicy_postgres_route_is_scoped(owner_server: ServerHandle) -> None:
    attack = {"sql": "VALUES ((SELECT count(*) FROM domains))", "cache": "bypass"}
    assert _info(owner_server, attack, _analyst())["engine"] == "postgres"
    assert get(owner_server, attack, _analyst()).column(0)[0].as_py() == _own_domains(owner_server)
    lateral = "SELECT count(DISTINCT d.project_id) FROM (VALUES (1)) o(x), LATERAL (SELECT * FROM domains) d"
    assert _scalar(owner_server, lateral, _analyst()) == 1
    hybrid = "VALUES ((SELECT count(DISTINCT c.project_id) FROM cdx_records c JOIN domains d ON d.domain = c.domain))"
    assert _info(owner_server, {"sql": hybrid}, _analyst())["engine"] == "hybrid"
    assert _scalar(owner_server, hybrid, _analyst()) == 1


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("VALUES ((SELECT count(*) FROM pg_settings))", "unknown table 'pg_settings'"),
        ("VALUES ((SELECT max(path) FROM duckdb_databases()))", "duckdb_databases"),
        ("VALUES ((SELECT count(*) FROM sqlite_master))", "unknown table 'sqlite_master'"),
        ("SELECT * FROM (UNPIVOT pg_settings ON setting INTO NAME k VALUE v)", "unknown table 'pg_settings'"),
        ("SELECT * FROM (PIVOT duckdb_settings() ON name USING count(*))", "duckdb_settings"),
    ],
)
def test_sqlpolicy_admin_cannot_reach_the_lockdown(owner_server: ServerHandle, attack: str, reason: str) -> None:
    with pytest.raises(pa.ArrowInvalid, match=reason):
        get(owner_server, {"sql": attack}, token("admin"))
    with pytest.raises(adbc_driver_manager.Error, match=reason):  # noqa: SIM117
        with connect(owner_server, **{"adbc.flight.sql.authorization_header": f"Bearer {token('admin')}"}) as conn:
            with conn.cursor() as cur:
                cur.execute(attack)


def test_sqlpolicy_admin_cannot_read_data_files_through_values(owner_server: ServerHandle) -> None:
    table = pa.table({"project_id": [OWN], "n": [1]})
    writer, _ = owner_server.client.do_put(flight.FlightDescriptor.for_path("files_probe"), table.schema,
                                           options(token("admin")))  # fmt: skip
    writer.write_table(table)
    writer.close()
    files = sorted(p for p in Path(owner_server.data_dir).rglob("*") if p.is_file() and "files_probe" in str(p))
    assert any(p.suffix == ".parquet" for p in files) and files
    for path in files:
        for attack in (
            f"VALUES ((SELECT count(*) FROM '{path}'))",
            f"SELECT * FROM (UNPIVOT '{path}' ON n INTO NAME k VALUE v)",
        ):
            with pytest.raises(pa.ArrowInvalid, match="unknown table"):
                get(owner_server, {"sql": attack}, token("admin"))


# -- item 2: secret columns and admin-only tables -------------------------------------------------


@pytest.mark.parametrize(
    ("attack", "column"),
    [
        ("SELECT session_token FROM user_sessions", "user_sessions.session_token"),
        ("SELECT hashed_password FROM users", "users.hashed_password"),
        ('SELECT u."HASHED_PASSWORD" FROM users u', "users.hashed_password"),
        ("VALUES ((SELECT max(session_token) FROM user_sessions))", "user_sessions.session_token"),
        ("SELECT * FROM (UNPIVOT users ON hashed_password INTO NAME k VALUE v)", "users.hashed_password"),
    ],
)
def test_sqlpolicy_secret_columns_named_are_refused(owner_server: ServerHandle, attack: str, column: str) -> None:
    with pytest.raises(flight.FlightUnauthorizedError, match=f"column {column} is secret"):
        get(owner_server, {"sql": attack}, _analyst())
    with pytest.raises(flight.FlightUnauthorizedError, match=f"column {column} is secret"):
        get(owner_server, {"sql": attack}, token("analyst", ["proj-002", "proj-003"]))


@pytest.mark.parametrize(
    "attack",
    [
        "SELECT * FROM users",
        "SELECT * FROM user_sessions",
        "SELECT row_to_json(u)::text AS row FROM users u",
        "SELECT DISTINCT u.* FROM users u JOIN projects p ON p.owner_id = u.id",
        "SELECT DISTINCT u.* FROM users u JOIN cdx_records c ON c.project_id IS NOT NULL AND u.id > 0",
    ],
)
def test_sqlpolicy_whole_rows_leave_secrets_out(owner_server: ServerHandle, attack: str) -> None:
    for bearer in (_analyst(), token("analyst", ["proj-002", "proj-003"])):
        table = get(owner_server, {"sql": attack, "cache": "bypass"}, bearer)
        assert table.num_rows > 0
        assert not {"hashed_password", "session_token"} & set(table.column_names)
        text = json.dumps(table.to_pylist(), default=str)
        assert "scrypt$" not in text and "hashed_password" not in text and "session_token" not in text
    for dataset in ("users", "user_sessions"):
        table = get(owner_server, {"dataset": dataset}, token("analyst"))
        assert not {"hashed_password", "session_token"} & set(table.column_names)


def test_sqlpolicy_flightsql_leaves_secrets_out(owner_server: ServerHandle) -> None:
    header = {"adbc.flight.sql.authorization_header": f"Bearer {_analyst()}"}
    with connect(owner_server, **header) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM users")
        assert "hashed_password" not in [d[0] for d in cur.description]
        with pytest.raises(adbc_driver_manager.Error, match="session_token is secret"):
            cur.execute("SELECT session_token FROM user_sessions")


def test_sqlpolicy_admin_only_tables(owner_server: ServerHandle) -> None:
    for attack in (
        {"sql": "SELECT count(*) FROM audit_logs"},
        {"sql": "VALUES ((SELECT count(*) FROM admin_settings))"},
        {"dataset": "audit_logs"},
    ):
        with pytest.raises(flight.FlightUnauthorizedError, match="for administrators only"):
            get(owner_server, attack, token("analyst"))
    assert get(owner_server, {"sql": "SELECT count(*) FROM audit_logs"}, token("admin")).column(0)[0].as_py() > 0
    # a named query declared by the catalogue still aggregates the audit log
    assert get(owner_server, {"query": "system.user_activity"}, token("viewer", [OWN])).num_rows > 0


def test_sqlpolicy_admin_reads_what_the_role_allows(owner_server: ServerHandle) -> None:
    hashes = get(owner_server, {"sql": "SELECT hashed_password FROM users"}, token("admin"))
    assert hashes.column(0)[0].as_py().startswith("scrypt$")
    assert "hashed_password" not in get(owner_server, {"sql": "SELECT * FROM users"}, token("admin")).column_names


# -- item 4: project columns matched as the engine resolves them ----------------------------------


@pytest.mark.parametrize("column", ["Project_ID", "PROJECT_ID"])
def test_sqlpolicy_dataset_project_column_in_any_case_is_scoped(owner_server: ServerHandle, column: str) -> None:
    name = "cased_upper" if column.isupper() else "cased_mixed"
    table = pa.table({column: ["proj-001", "proj-002", "proj-003"], "n": [1, 2, 3]})
    writer, _ = owner_server.client.do_put(
        flight.FlightDescriptor.for_path(name), table.schema, options(token("admin"))
    )
    writer.write_table(table)
    writer.close()
    assert get(owner_server, {"sql": f"SELECT sum(n) FROM {name}"}, _analyst()).column(0).to_pylist() == [1]
    assert get(owner_server, {"dataset": name}, _analyst()).column("n").to_pylist() == [1]
    assert get(owner_server, {"sql": f"VALUES ((SELECT sum(n) FROM {name}))"}, _analyst()).column(0)[0].as_py() == 1


# -- item 8 and 16: planning-time blow-ups and malformed text --------------------------------------


@pytest.mark.parametrize(
    ("attack", "function"),
    [
        ("SELECT length(repeat('x', 3000000000))", "repeat"),
        ("SELECT length(repeat(repeat('x', 100000), 100000))", "repeat"),
        ("SELECT length(lpad('x', 3000000000, 'y'))", "lpad"),
        ("SELECT len(range(3000000000))", "range"),
        ("SELECT len(generate_series(DATE '0001-01-01', DATE '9999-01-01', INTERVAL 1 SECOND))", "generate_series"),
    ],
)
def test_sqlpolicy_constant_blowups_are_refused_before_planning(
    owner_server: ServerHandle, attack: str, function: str
) -> None:
    reason = rf"{function}\(\) would build .*FLIGHT_LIMITS__MAX_GENERATED_LENGTH"
    with pytest.raises(pa.ArrowInvalid, match=reason):
        _info(owner_server, {"sql": attack}, token("admin"))
    with pytest.raises(pa.ArrowInvalid, match=reason):
        get(owner_server, {"sql": attack}, token("admin"))
    with pytest.raises(pa.ArrowInvalid, match=r"repeat\(\) would build 3,000,000,000 characters"):
        get(owner_server, {"sql": "SELECT length(repeat('x', $1))", "params": [3_000_000_000]}, token("admin"))
    assert _scalar(owner_server, "SELECT length(repeat('x', 1000))", token("admin")) == 1000


def test_sqlpolicy_lone_surrogate_is_invalid_argument(owner_server: ServerHandle) -> None:
    raw = b'{"sql": "SELECT \'\\ud800\' AS x"}'
    assert "\ud800" in json.loads(raw)["sql"]
    with pytest.raises(pa.ArrowInvalid, match="lone surrogate"):
        owner_server.client.do_get(flight.Ticket(raw), options(token("admin"))).read_all()
    with pytest.raises(pa.ArrowInvalid, match="lone surrogate"):
        owner_server.client.get_flight_info(flight.FlightDescriptor.for_command(raw), options(token("admin")))
    assert _scalar(owner_server, "SELECT 1", token("admin")) == 1


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """One query slot per caller, no waiting for one, and a one-second analyst deadline."""
    limits = LimitSettings(max_concurrent_per_caller=1, queue_timeout_s=0, deadlines_s={"analyst": 1.0})
    handle = start_server(
        tmp_path_factory.mktemp("tight"),
        rows=5_000,
        auth=AuthSettings(jwt_secret=SECRET),
        cache=CacheSettings(warm_top_n=0),
        limits=limits,
    )
    yield handle
    stop_server(handle)


_SLOW_PLAN = "SELECT * FROM (PIVOT (SELECT i % 7 AS k, i FROM range(3000000000) t(i)) ON k USING count(*))"


def test_sqlpolicy_describe_runs_under_the_deadline(tight_server: ServerHandle) -> None:
    bearer = token("analyst", [OWN], sub="planner")
    with pytest.raises(flight.FlightTimedOutError, match="deadline"):
        _info(tight_server, {"sql": _SLOW_PLAN}, bearer)
    assert _info(tight_server, {"sql": "SELECT 1 AS one"}, bearer)["engine"] == "duckdb"


def test_sqlpolicy_describe_holds_a_query_slot(tight_server: ServerHandle) -> None:
    bearer = token("analyst", [OWN], sub="streamer")
    stream = tight_server.client.do_get(
        flight.Ticket(json.dumps({"sql": "SELECT i FROM range(100000000) t(i)", "cache": "bypass"}).encode()),
        options(bearer),
    )
    stream.read_chunk()  # the stream is open and holds the caller's only slot
    with pytest.raises(flight.FlightServerError, match="too many concurrent queries"):
        _info(tight_server, {"sql": "SELECT 2 AS two", "cache": "bypass"}, bearer)
    stream.cancel()
