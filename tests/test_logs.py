"""One structured log line per request, with its query id."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path

import jwt
import pyarrow.flight as flight
import pytest

from flight_server.ops.logs import JsonFormatter
from flight_server.security.auth import hash_password
from flight_server.settings import AuthSettings, CacheSettings, RedisSettings

from support.servers import ServerHandle, start_server, stop_server

pytestmark = pytest.mark.redis


def test_logs_one_json_line_per_request_with_query_id(server: ServerHandle, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flight_server.server")
    reader = server.client.do_get(flight.Ticket(json.dumps({"query": "domains.top"}).encode()))
    first = reader.read_chunk()
    reader.read_all()
    metadata = json.loads(first.app_metadata.to_pybytes())
    query_id = metadata["query_id"]
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.getMessage() == "request"]
    mine = [line for line in lines if line.get("query_id") == query_id]
    assert len(mine) == 1
    line = mine[0]
    assert line["rpc"] == "DoGet"
    assert line["route"] == "domains.top"
    assert line["status"] == "ok"
    assert line["engine"] == "duckdb"
    assert line["cache"] == metadata["cache"]
    assert line["cache"] in ("miss", "hit-l1", "hit-l2")
    assert line["ms"] >= 0


def test_logs_failed_request_logged_with_status(server: ServerHandle, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flight_server.server")
    with pytest.raises(Exception, match="syntax"):
        server.get({"sql": "selec 1"})
    statuses = [getattr(r, "fields", {}).get("status") for r in caplog.records]
    assert "invalid_argument" in statuses


def test_logs_exception_keeps_traceback_in_log() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert "RuntimeError: boom" in line["error"]
    assert "test_logs.py" in line["error"]


REDIS_PASSWORD = "redis-pw-Zq81x"
JWT_SECRET = "log-test-secret-long-enough-for-hs256"
BASIC_PASSWORD = "basic-pw-Kx72"


@pytest.mark.parametrize("redis_user", ["default", ""])  # accepted by Redis, and refused (errors logged)
def test_logs_never_contain_secrets_or_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, redis_user: str
) -> None:
    caplog.set_level(logging.DEBUG)
    users = tmp_path / "users.json"
    users.write_text(
        json.dumps(
            [{"username": "bi", "password_hash": hash_password(BASIC_PASSWORD, b"salt-salt-salt-1"), "role": "admin"}]
        )
    )
    redis = RedisSettings(
        url=f"redis://{redis_user}:{REDIS_PASSWORD}@127.0.0.1:6379/0", key_prefix=f"logs-{time.time_ns()}:"
    )
    handle = start_server(
        tmp_path / "data", redis=redis, auth=AuthSettings(jwt_secret=JWT_SECRET, users_file=users),
        cache=CacheSettings(warm_top_n=0),
    )  # fmt: skip
    now = int(time.time())
    good = jwt.encode({"sub": "log-test", "aud": "chrono-flight", "exp": now + 600, "role": "admin"}, JWT_SECRET)
    forged = jwt.encode({"sub": "log-test", "aud": "chrono-flight", "exp": now + 600, "role": "admin"}, "x" * 40)
    results = []
    try:
        for bearer in (good, forged, "not-a-token-Vb55"):
            options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {bearer}".encode())])
            ticket = flight.Ticket(json.dumps({"sql": "SELECT 42 AS n"}).encode())
            for _ in range(2):
                with contextlib.suppress(flight.FlightError):
                    handle.client.do_get(ticket, options=options).read_all()
            for action in ("health", "cache.stats"):
                with contextlib.suppress(flight.FlightError):
                    results += [
                        r.body.to_pybytes() for r in handle.client.do_action(flight.Action(action, b""), options)
                    ]
        issued = handle.client.authenticate_basic_token("bi", BASIC_PASSWORD)
        with contextlib.suppress(flight.FlightError):
            handle.client.authenticate_basic_token("bi", BASIC_PASSWORD + "-wrong")
    finally:
        stop_server(handle)
    logged = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert "request" in logged and "audit" in logged
    secrets = [REDIS_PASSWORD, JWT_SECRET, BASIC_PASSWORD, good, forged, "not-a-token-Vb55", issued[1].decode()]
    for secret in secrets:
        assert secret not in logged
        assert all(secret.encode() not in result for result in results)
    assert any(b"***@127.0.0.1:6379" in result for result in results)  # the URL, redacted
