"""Flight SQL with authentication: bearer and basic auth, handles tied to callers, limits."""

from __future__ import annotations

import json
from collections.abc import Iterator

import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from google.protobuf import any_pb2

from flight_server.flightsql import flight_sql_pb2 as sql
from flight_server.flightsql.protocol import pack
from flight_server.security.auth import hash_password
from flight_server.settings import AuthSettings, CacheSettings, FlightSqlSettings

from support.flightsql import action, connect, descriptor
from support.servers import ServerHandle, start_server, stop_server
from support.tokens import SECRET, options, token

IDLE_S = 1.0


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    users = tmp_path_factory.mktemp("sql-users") / "users.json"
    users.write_text(
        json.dumps([{"username": "bi", "password_hash": hash_password("pw-9", b"salt-salt-salt-2"), "role": "analyst"}])
    )
    handle = start_server(
        tmp_path_factory.mktemp("sql-secured"),
        rows=5_000,
        auth=AuthSettings(jwt_secret=SECRET, users_file=users),
        cache=CacheSettings(warm_top_n=0),
        flightsql=FlightSqlSettings(max_prepared_per_caller=2, max_prepared=3, prepared_idle_s=IDLE_S),
    )
    yield handle
    stop_server(handle)


def _prepare(handle: ServerHandle, bearer: str, query: str = "SELECT 1 AS x") -> bytes:
    request = sql.ActionCreatePreparedStatementRequest(query=query)
    [raw] = action(handle.client, "CreatePreparedStatement", pack(request), options(bearer))
    result = sql.ActionCreatePreparedStatementResult()
    any_pb2.Any.FromString(raw).Unpack(result)
    return bytes(result.prepared_statement_handle)


def _close(handle: ServerHandle, bearer: str, prepared: bytes) -> None:
    request = sql.ActionClosePreparedStatementRequest(prepared_statement_handle=prepared)
    action(handle.client, "ClosePreparedStatement", pack(request), options(bearer))


def _info(handle: ServerHandle, bearer: str, prepared: bytes) -> flight.FlightInfo:
    command = sql.CommandPreparedStatementQuery(prepared_statement_handle=prepared)
    return handle.client.get_flight_info(descriptor(command), options(bearer))


def test_flightsql_bearer_token_connects(secured: ServerHandle) -> None:
    header = f"Bearer {token('analyst', ['proj-001'])}"
    with connect(secured, **{"adbc.flight.sql.authorization_header": header}) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM cdx_records")
        assert cur.fetchone()[0] >= 0


def test_flightsql_basic_auth_connects(secured: ServerHandle) -> None:
    with connect(secured, username="bi", password="pw-9") as conn, conn.cursor() as cur:
        cur.execute("SELECT 5 AS x")
        assert cur.fetchone() == (5,)


def test_flightsql_wrong_password_is_unauthenticated(secured: ServerHandle) -> None:
    with pytest.raises(adbc_driver_manager.Error, match="wrong username or password"):  # noqa: SIM117
        with connect(secured, username="bi", password="nope") as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")


def test_flightsql_viewer_may_not_run_statements(secured: ServerHandle) -> None:
    header = f"Bearer {token('viewer', ['proj-001'])}"
    with (
        connect(secured, **{"adbc.flight.sql.authorization_header": header}) as conn,
        conn.cursor() as cur,
        pytest.raises(adbc_driver_manager.Error, match="may not run raw SQL"),
    ):
        cur.execute("SELECT 1")


def test_flightsql_handles_of_another_caller_are_not_found(secured: ServerHandle) -> None:
    alice, bob = token("analyst", [], sub="alice"), token("analyst", [], sub="bob")
    prepared = _prepare(secured, alice)
    with pytest.raises(pa.ArrowKeyError, match="unknown or expired prepared statement"):
        _info(secured, bob, prepared)
    with pytest.raises(pa.ArrowKeyError):
        _close(secured, bob, prepared)
    assert _info(secured, alice, prepared).endpoints
    _close(secured, alice, prepared)


def test_flightsql_prepared_limit_per_caller_and_overall(secured: ServerHandle) -> None:
    carol, dave = token("analyst", [], sub="carol"), token("analyst", [], sub="dave")
    held = [_prepare(secured, carol), _prepare(secured, carol)]
    with pytest.raises(flight.FlightServerError, match="RESOURCE_EXHAUSTED: you hold 2 prepared statements"):
        _prepare(secured, carol)
    held_by_dave = _prepare(secured, dave)
    with pytest.raises(flight.FlightServerError, match="RESOURCE_EXHAUSTED: the server holds 3"):
        _prepare(secured, dave)
    for prepared in held:
        _close(secured, carol, prepared)
    _close(secured, dave, held_by_dave)


def test_flightsql_idle_prepared_statements_expire(secured: ServerHandle) -> None:
    erin = token("analyst", [], sub="erin")
    prepared = _prepare(secured, erin)
    statements = secured.server.sql.prepared
    clock = statements.clock
    statements.clock = lambda: clock() + IDLE_S * 1.5  # the statement's idle time passes
    try:
        with pytest.raises(pa.ArrowKeyError, match="expired"):
            _info(secured, erin, prepared)
    finally:
        statements.clock = clock


def test_flightsql_ticket_is_authorized_again(secured: ServerHandle) -> None:
    query = sql.CommandStatementQuery(query="SELECT count(*) AS n FROM cdx_records")
    info = secured.client.get_flight_info(descriptor(query), options(token("admin")))
    ticket = info.endpoints[0].ticket
    with pytest.raises(flight.FlightUnauthorizedError, match="may not run raw SQL"):
        secured.client.do_get(ticket, options(token("viewer", ["proj-001"]))).read_all()
    scoped = secured.client.do_get(ticket, options(token("analyst", []))).read_all()
    assert scoped.to_pylist() == [{"n": 0}]
