"""Per-caller limits through a real server: rate, concurrency, result size, deadlines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_server.settings import AuthSettings, CacheSettings, LimitSettings

from support.servers import ServerHandle, start_server, stop_server
from support.tokens import SECRET, options, token
from support.waiting import wait_for


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


# -- slots: fair per caller, and freed by streams nobody reads ------------------------------

ENDLESS = {"sql": "SELECT * FROM range(100000000000)"}  # batch after batch until the client stops reading
UNLIMITED_RESULTS = {"max_result_rows": 10**15, "max_result_bytes": 10**15}


class Callers:
    """Clients of one server, each its own connection, and the streams they leave unread.

    `close` cancels every stream and closes every client, pass or fail: a stream left
    open would keep the server's shutdown waiting.
    """

    def __init__(self, handle: ServerHandle) -> None:
        self.location = handle.location
        self.clients: list[flight.FlightClient] = []
        self.readers: list[flight.FlightStreamReader] = []

    def client(self) -> flight.FlightClient:
        self.clients.append(flight.connect(self.location))
        return self.clients[-1]

    def unread(self, client: flight.FlightClient, bearer: str | None = None) -> flight.FlightStreamReader:
        """A DoGet of an endless result that holds its slot and is never read."""
        call = options(bearer) if bearer else flight.FlightCallOptions()
        self.readers.append(client.do_get(flight.Ticket(json.dumps(ENDLESS).encode()), options=call))
        return self.readers[-1]

    def close(self) -> None:
        for reader in self.readers:
            reader.cancel()
        for client in self.clients:
            client.close()


def _value(client: flight.FlightClient, value: int, bearer: str | None = None) -> list[int]:
    call = options(bearer) if bearer else flight.FlightCallOptions()
    ticket = flight.Ticket(json.dumps({"sql": f"SELECT {value} AS v"}).encode())
    return list(client.do_get(ticket, options=call).read_all().column("v").to_pylist())


def test_limits_per_caller_cap_leaves_slots_to_others(tmp_path: Path) -> None:
    handle = start_server(
        tmp_path / "d",
        rows=0,
        auth=AuthSettings(jwt_secret=SECRET),
        cache=CacheSettings(l1_max_entries=0),
        limits=LimitSettings(
            max_concurrent_per_caller=2, max_concurrent_total=3, queue_timeout_s=0.2, **UNLIMITED_RESULTS
        ),
    )
    callers = Callers(handle)
    try:
        hog_client, other_client = callers.client(), callers.client()
        hog = token("admin", sub="hog")  # admins are held to the cap too
        for _ in range(2):
            callers.unread(hog_client, hog)
        with pytest.raises(flight.FlightServerError, match=r"RESOURCE_EXHAUSTED: .*at most 2 per caller"):
            _value(hog_client, 1, hog)
        other = token("analyst", [], sub="other")
        assert _value(other_client, 7, other) == [7]
        callers.unread(other_client, other)  # the last slot
        with pytest.raises(flight.FlightServerError, match=r"RESOURCE_EXHAUSTED: .*at most 3 in total"):
            _value(callers.client(), 8, token("analyst", [], sub="third"))
    finally:
        callers.close()
        stop_server(handle)


def test_limits_without_auth_each_connection_is_a_caller(tmp_path: Path) -> None:
    handle = start_server(
        tmp_path / "d",
        rows=0,
        cache=CacheSettings(l1_max_entries=0),
        limits=LimitSettings(max_concurrent_per_caller=1, queue_timeout_s=0.2, **UNLIMITED_RESULTS),
    )
    callers = Callers(handle)
    try:
        first, second = callers.client(), callers.client()
        callers.unread(first)
        with pytest.raises(flight.FlightServerError, match=r"RESOURCE_EXHAUSTED: .*at most 1 per caller"):
            _value(first, 1)
        assert _value(second, 2) == [2]
    finally:
        callers.close()
        stop_server(handle)


def test_limits_streams_nobody_reads_are_ended_and_free_their_slots(tmp_path: Path) -> None:
    handle = start_server(
        tmp_path / "d",
        rows=0,
        auth=AuthSettings(jwt_secret=SECRET),
        cache=CacheSettings(l1_max_entries=0),
        limits=LimitSettings(
            max_concurrent_per_caller=4,
            max_concurrent_total=4,
            queue_timeout_s=60,  # the other caller waits in line for as long as it takes
            stall_timeout_s=1,
            **UNLIMITED_RESULTS,
        ),
    )
    callers = Callers(handle)
    try:
        hog_client = callers.client()
        unread = [callers.unread(hog_client, token("analyst", [], sub="hog")) for _ in range(4)]  # every slot
        assert _value(callers.client(), 7, token("analyst", [], sub="other")) == [7]
        admin = options(token("admin", sub="ops"))

        def health() -> dict[str, Any]:
            result = next(iter(handle.client.do_action(flight.Action("health", b""), options=admin)))
            report: dict[str, Any] = json.loads(result.body.to_pybytes())
            return report

        # each stalls once its client's buffer is full
        wait_for(lambda: health()["limits"]["stalled_streams_ended"] >= 4, 60, "the unread streams were not all ended")
        for reader in unread:  # what was sent before the stall arrives, then the reason
            with pytest.raises(flight.FlightTimedOutError, match="client stopped reading for 1 s"):
                reader.read_all()
        report = health()
        assert report["active_queries"] == []  # the cursors were closed
        assert report["limits"]["running"] == 0
    finally:
        callers.close()
        stop_server(handle)
