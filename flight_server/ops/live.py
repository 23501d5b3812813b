"""Live metrics over DoExchange: one record batch of the server's metrics every interval.

The client sends `FlightDescriptor.for_command(b'{"subscribe": "system.metrics",
"interval_s": 1}')` and reads; the server writes one row of current metrics at once and
then every `interval_s` seconds (0.2 to 60) until the client cancels the call, closes
its side of the stream, or goes away, or until the server drains.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.flight as flight

from flight_server.commands import load_json
from flight_server.errors import InvalidArgument, ResourceExhausted
from flight_server.ops.lifecycle import Lifecycle

logger = logging.getLogger(__name__)

TOPICS = ("system.metrics",)
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.2, 60.0
MAX_SUBSCRIBERS = 16  # each open stream holds one Flight worker thread

SCHEMA = pa.schema(
    [
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("uptime_s", pa.float64()),
        ("status", pa.string()),
        ("cpu_ratio", pa.float64()),
        ("system_cpu_ratio", pa.float64()),
        ("system_memory_ratio", pa.float64()),
        ("rss_bytes", pa.int64()),
        ("duckdb_memory_bytes", pa.int64()),
        ("active_queries", pa.int32()),
        ("in_flight_calls", pa.int32()),
        ("requests_total", pa.int64()),
        ("requests_per_s", pa.float64()),
        ("errors_per_s", pa.float64()),
        ("cache_hit_ratio", pa.float64()),
        ("cache_l1_entries", pa.int64()),
        ("cache_l1_bytes", pa.int64()),
        ("live_subscribers", pa.int32()),
    ]
)


def parse_subscription(descriptor: flight.FlightDescriptor) -> float:
    """The interval of a subscribe command; INVALID_ARGUMENT for anything else."""
    example = '{"subscribe": "system.metrics", "interval_s": 1}'
    if descriptor.descriptor_type != flight.DescriptorType.CMD:
        raise InvalidArgument(f"DoExchange takes a JSON command such as {example}")
    body = load_json(descriptor.command, f"the DoExchange command (e.g. {example})")
    if not isinstance(body, dict) or "subscribe" not in body:
        raise InvalidArgument(f"DoExchange command must be a subscription, e.g. {example}")
    unknown = sorted(set(body) - {"subscribe", "interval_s"})
    if unknown:
        raise InvalidArgument(f"unknown key '{unknown[0]:.40}' in the subscription; keys: subscribe, interval_s")
    topic = body["subscribe"]
    if topic not in TOPICS:
        raise InvalidArgument(f"unknown subscription '{topic!s:.60}'; available: {', '.join(TOPICS)}")
    interval = body.get("interval_s", 1.0)
    if isinstance(interval, bool) or not isinstance(interval, int | float):
        raise InvalidArgument("interval_s must be a number of seconds")
    if not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S:
        raise InvalidArgument(f"interval_s must be between {MIN_INTERVAL_S:g} and {MAX_INTERVAL_S:g} seconds")
    return float(interval)


@dataclass(frozen=True)
class LiveSample:
    """The server's state for one row, read by the composition root at every row."""

    uptime_s: float
    active_queries: int
    requests_total: int
    errors_total: int
    duckdb_memory_bytes: int | None  # None: closing or busy, unknown this time
    cache_hit_ratio: float | None
    cache_l1_entries: int
    cache_l1_bytes: int
    cpu_ratio: float | None  # the resource monitor's last figures (None before its first sample)
    system_cpu_ratio: float | None


class LiveMetrics:
    """Open live streams and what one row of metrics holds."""

    def __init__(self, sample: Callable[[], LiveSample], lifecycle: Lifecycle) -> None:
        self._sample = sample
        self._lifecycle = lifecycle
        self._lock = threading.Lock()
        self.subscribers = 0

    def stream(
        self,
        interval_s: float,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
        cancelled: Callable[[], bool],
    ) -> int:
        """Write a batch every interval until the client or the server ends it; batches sent."""
        with self._lock:
            if self.subscribers >= MAX_SUBSCRIBERS:
                raise ResourceExhausted(f"at most {MAX_SUBSCRIBERS} live metrics streams at once; close one")
            self.subscribers += 1
        try:
            return self._loop(interval_s, reader, writer, cancelled)
        finally:
            with self._lock:
                self.subscribers -= 1

    def _loop(
        self,
        interval_s: float,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
        cancelled: Callable[[], bool],
    ) -> int:
        client_done = threading.Event()
        threading.Thread(target=_watch_client, args=(reader, client_done), name="live-client", daemon=True).start()
        stopping = self._lifecycle.stopping
        process = psutil.Process()
        process.cpu_percent(None)
        last = (time.monotonic(), self._sample())
        sent = 0
        writer.begin(SCHEMA)
        while True:
            now = time.monotonic(), self._sample()
            try:
                writer.write_batch(self.row(process, last, now))
            except (flight.FlightError, OSError) as exc:  # the client went away mid-write
                logger.debug("live stream ended by a failed write", extra={"fields": {"error": str(exc)[:120]}})
                return sent
            sent += 1
            last = now
            deadline = time.monotonic() + interval_s
            while time.monotonic() < deadline:
                if cancelled() or client_done.is_set() or stopping.is_set():
                    return sent
                client_done.wait(min(0.05, max(0.0, deadline - time.monotonic())))

    def row(
        self,
        process: psutil.Process,
        last: tuple[float, LiveSample],
        now: tuple[float, LiveSample],
    ) -> pa.RecordBatch:
        """One row: the state sampled `now`, with the rates since `last`."""
        elapsed = max(now[0] - last[0], 1e-9)
        state = now[1]
        cpu = min(process.cpu_percent(None) / 100.0 / (psutil.cpu_count() or 1), 1.0)  # since the last row
        measured = last[0] != now[0]
        values: dict[str, Any] = {
            "timestamp": dt.datetime.now(dt.UTC),
            "uptime_s": state.uptime_s,
            "status": self._lifecycle.state,
            # the first row comes right after priming: too soon to measure, the monitor's figure
            "cpu_ratio": cpu if elapsed >= MIN_INTERVAL_S / 2 else state.cpu_ratio,
            "system_cpu_ratio": state.system_cpu_ratio,
            "system_memory_ratio": psutil.virtual_memory().percent / 100.0,
            "rss_bytes": process.memory_info().rss,
            "duckdb_memory_bytes": state.duckdb_memory_bytes,
            "active_queries": state.active_queries,
            "in_flight_calls": self._lifecycle.in_flight,
            "requests_total": state.requests_total,
            "requests_per_s": (state.requests_total - last[1].requests_total) / elapsed if measured else 0.0,
            "errors_per_s": (state.errors_total - last[1].errors_total) / elapsed if measured else 0.0,
            "cache_hit_ratio": state.cache_hit_ratio,
            "cache_l1_entries": state.cache_l1_entries,
            "cache_l1_bytes": state.cache_l1_bytes,
            "live_subscribers": self.subscribers,
        }
        return pa.RecordBatch.from_pylist([values], schema=SCHEMA)


def _watch_client(reader: flight.MetadataRecordBatchReader, done: threading.Event) -> None:
    """Set `done` once the client closes its side of the stream (or the call ends)."""
    try:
        while True:
            reader.read_chunk()
    except StopIteration:
        pass
    except Exception:  # the call was cancelled or ended: the same for us
        logger.debug("live stream's client side ended with an error", exc_info=True)
    done.set()
