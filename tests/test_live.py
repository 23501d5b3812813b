"""Live metrics over DoExchange: batches every interval until the client goes."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_server.ops.live import SCHEMA

from support.servers import ServerHandle
from support.waiting import wait_for


def _subscribe(server: ServerHandle, body: Any) -> tuple[Any, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return server.client.do_exchange(flight.FlightDescriptor.for_command(raw))


def _wait_no_subscribers(server: ServerHandle, timeout_s: float = 30.0) -> None:
    wait_for(lambda: not server.app.live.subscribers, timeout_s, "the live stream did not stop")


def test_live_streams_a_batch_every_interval_until_cancelled(server: ServerHandle) -> None:
    _writer, reader = _subscribe(server, {"subscribe": "system.metrics", "interval_s": 0.2})
    try:
        first = reader.read_chunk().data
        for _ in range(5):
            server.get({"sql": "SELECT 1 AS one"})
        rows = [first.to_pylist()[0]] + [reader.read_chunk().data.to_pylist()[0] for _ in range(2)]
        assert server.app.live.subscribers == 1
    finally:
        reader.cancel()  # a failed assertion must not leave the stream open (the server would not stop)
    assert first.schema.equals(SCHEMA)
    assert first.num_rows == 1
    times = [row["timestamp"] for row in rows]
    assert times == sorted(times) and times[0] < times[-1]
    assert rows[0]["status"] == "serving"
    assert rows[0]["rss_bytes"] > 0 and rows[0]["duckdb_memory_bytes"] > 0
    assert rows[-1]["requests_total"] >= rows[0]["requests_total"] + 5
    assert any(row["requests_per_s"] > 0 for row in rows[1:])
    # the first row comes too soon after the stream opened to measure CPU: unknown or the monitor's figure
    assert rows[0]["cpu_ratio"] is None or 0 <= rows[0]["cpu_ratio"] <= 1
    assert all(0 <= row["cpu_ratio"] <= 1 for row in rows[1:])
    _wait_no_subscribers(server)


def test_live_stops_when_the_client_closes_its_side(server: ServerHandle) -> None:
    writer, reader = _subscribe(server, {"subscribe": "system.metrics", "interval_s": 0.2})
    reader.read_chunk()
    writer.close()  # returns once the server has ended the stream
    _wait_no_subscribers(server)


def test_live_stops_when_the_client_process_goes_away(server: ServerHandle) -> None:
    body = json.dumps({"subscribe": "system.metrics", "interval_s": 0.2})
    code = (
        "import pyarrow.flight as f, os\n"
        f"c = f.connect({server.location!r})\n"
        f"w, r = c.do_exchange(f.FlightDescriptor.for_command({body!r}.encode()))\n"
        "r.read_chunk(); r.read_chunk(); print('two', flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "two", out.stderr
    _wait_no_subscribers(server)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "must be JSON"),
        (b'{"subscribe": ' + b"[" * 3000 + b"]" * 3000 + b"}", "deeper than 32 levels"),
        ([1, 2], "must be a subscription"),
        ({"interval_s": 1}, "must be a subscription"),
        ({"subscribe": "system.nothing"}, "unknown subscription"),
        ({"subscribe": "system.metrics", "every": 1}, "unknown key 'every'"),
        ({"subscribe": "system.metrics", "interval_s": 0.01}, "between 0.2 and 60"),
        ({"subscribe": "system.metrics", "interval_s": 3600}, "between 0.2 and 60"),
        ({"subscribe": "system.metrics", "interval_s": "1"}, "must be a number"),
        ({"subscribe": "system.metrics", "interval_s": True}, "must be a number"),
    ],
)
def test_live_bad_subscriptions_are_invalid_argument(server: ServerHandle, body: Any, message: str) -> None:
    _writer, reader = _subscribe(server, body)
    with pytest.raises(pa.ArrowInvalid, match=message):
        reader.read_chunk()


def test_live_path_descriptor_is_invalid_argument(server: ServerHandle) -> None:
    _writer, reader = server.client.do_exchange(flight.FlightDescriptor.for_path("system.metrics"))
    with pytest.raises(pa.ArrowInvalid, match="JSON command"):
        reader.read_chunk()
