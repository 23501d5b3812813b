"""Per-caller limits through a real server: rate, concurrency, result size, deadlines."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_server.settings import AuthSettings, CacheSettings, LimitSettings

from conftest import ServerHandle, start_server, stop_server
from test_security import SECRET, options, token


def _get(handle: ServerHandle, command: dict[str, object], bearer: str) -> pa.Table:
    return handle.client.do_get(flight.Ticket(json.dumps(command).encode()), options=options(bearer)).read_all()


def test_limits_rate_limit_gives_resource_exhausted(tmp_path: Path) -> None:
    handle = start_server(
        tmp_path / "d", rows=0, auth=AuthSettings(jwt_secret=SECRET), limits=LimitSettings(rate_per_s=1, burst=3)
    )
    try:
        analyst = token("analyst", [], sub="busy")
        for _ in range(3):
            _get(handle, {"sql": "SELECT 1"}, analyst)
        with pytest.raises(flight.FlightServerError, match="RESOURCE_EXHAUSTED: rate limit"):
            _get(handle, {"sql": "SELECT 1"}, analyst)
        _get(handle, {"sql": "SELECT 1"}, token("analyst", [], sub="someone-else"))  # others are unaffected
        _get(handle, {"sql": "SELECT 1"}, token("admin", sub="busy-admin"))
    finally:
        stop_server(handle)


def test_limits_concurrent_queries_queue_then_resource_exhausted(tmp_path: Path) -> None:
    handle = start_server(
        tmp_path / "d",
        rows=0,
        auth=AuthSettings(jwt_secret=SECRET),
        cache=CacheSettings(l1_max_entries=0),
        limits=LimitSettings(max_concurrent_per_caller=1, queue_timeout_s=0.3),
    )
    analyst = token("analyst", [], sub="one-at-a-time")
    try:
        reader = handle.client.do_get(
            flight.Ticket(json.dumps({"sql": "SELECT * FROM range(100000000000)"}).encode()), options=options(analyst)
        )
        reader.read_chunk()
        with pytest.raises(flight.FlightServerError, match="RESOURCE_EXHAUSTED: too many concurrent"):
            _get(handle, {"sql": "SELECT 2"}, analyst)
        assert _get(handle, {"sql": "SELECT 3 AS v"}, token("analyst", [], sub="other")).num_rows == 1
        reader.cancel()
    finally:
        stop_server(handle)


def test_limits_result_rows_for_non_admins(tmp_path: Path) -> None:
    handle = start_server(
        tmp_path / "d",
        rows=20_000,
        auth=AuthSettings(jwt_secret=SECRET),
        cache=CacheSettings(warm_top_n=0, max_entry_bytes=1000),  # results stream instead of being cached
        limits=LimitSettings(max_result_rows=5_000),
    )
    try:
        with pytest.raises(flight.FlightServerError, match="RESOURCE_EXHAUSTED: result larger"):
            _get(handle, {"sql": "SELECT * FROM cdx_records"}, token("analyst", ["proj-001", "proj-002"]))
        assert _get(handle, {"sql": "SELECT * FROM cdx_records LIMIT 4000"}, token("analyst", ["proj-001"])).num_rows
        assert _get(handle, {"sql": "SELECT * FROM cdx_records"}, token("admin")).num_rows == 20_000
    finally:
        stop_server(handle)


def test_limits_deadline_per_role(tmp_path: Path) -> None:
    handle = start_server(
        tmp_path / "d", rows=0, auth=AuthSettings(jwt_secret=SECRET), limits=LimitSettings(deadlines_s={"analyst": 0.3})
    )
    try:
        heavy = {"sql": "SELECT count(*) FROM range(1000000000000)"}
        with pytest.raises(flight.FlightTimedOutError, match=r"0\.3 s"):
            _get(handle, heavy, token("analyst", []))
        assert _get(handle, {"sql": "SELECT 1 AS v"}, token("analyst", [])).num_rows == 1
    finally:
        stop_server(handle)
