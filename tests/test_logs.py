"""One structured log line per request, with its query id."""

from __future__ import annotations

import json
import logging
import sys

import pyarrow.flight as flight
import pytest

from flight_server.logs import JsonFormatter

from conftest import ServerHandle


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
