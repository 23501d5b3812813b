"""Prometheus metrics: one registry per server, served over HTTP (`FLIGHT_METRICS_PORT`).

Two kinds of metric. Events are counted as they happen, from the one place that sees
every request end (the server's request log): requests and their latency by RPC, route,
engine and status; rows and bytes streamed; rows ingested. State is read when Prometheus
scrapes (`StateCollector`): cache lookups by level, routing decisions, circuit breakers,
DuckDB memory, resource use, active queries, health. Metric names are what
`deploy/alerts.yml` refers to; a test checks that every name it uses is exported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from flight_server.ops.resources import ResourceMonitor

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
MAX_ROUTES = 200  # distinct route labels; later ones are counted as "other"
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
REQUEST_LABELS = ("rpc", "route", "engine", "status")


@dataclass(frozen=True)
class MetricSources:
    """Where the state metrics come from: read at every scrape, built by the composition root."""

    version: str
    uptime_s: Callable[[], float]
    cache_counts: Callable[[], Mapping[str, int]]  # lookups by result, stores, too_large, coalesced, bumps
    cache_hit_ratio: Callable[[], float | None]
    cache_l1: Callable[[], Mapping[str, int]]  # entries, bytes
    redis_errors: Callable[[], int] | None  # None: no Redis (L2) configured
    routing_decisions: Callable[[], Mapping[tuple[str, str, bool], int]]  # (route, engine, fallback) -> count
    breakers: Callable[[], Mapping[str, Mapping[str, Any]]]  # circuit breaker snapshots by dependency
    resources: ResourceMonitor
    sync_status: Callable[[], Mapping[str, Any]] | None  # None: sync is off
    active_queries: Callable[[], int]
    in_flight: Callable[[], int]
    live_subscribers: Callable[[], int]
    warming_stats: Callable[[], Mapping[str, Any]]


class Metrics:
    """The server's metrics registry and the event metrics fed by the request log."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._routes: set[str] = set()
        self._lock = threading.Lock()
        self.requests = Counter(
            "chrono_requests",
            "Flight requests by RPC, route, engine and status",
            REQUEST_LABELS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "chrono_request_duration_seconds",
            "Request latency (streams: until the last batch is written)",
            REQUEST_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rows_streamed = Counter(
            "chrono_streamed_rows",
            "Rows sent by DoGet (results streamed straight from the engine: the batches read before hand-over)",
            ("route", "engine", "cache"),
            registry=self.registry,
        )
        self.bytes_streamed = Counter(
            "chrono_streamed_bytes",
            "Arrow bytes sent by DoGet (counted like chrono_streamed_rows)",
            ("route", "engine", "cache"),
            registry=self.registry,
        )
        self.ingested_rows = Counter(
            "chrono_ingested_rows", "Rows committed by DoPut", ("dataset",), registry=self.registry
        )
        self.ingested_bytes = Counter(
            "chrono_ingested_bytes", "Parquet bytes committed by DoPut", ("dataset",), registry=self.registry
        )

    def _route(self, route: str) -> str:
        with self._lock:
            if route in self._routes:
                return route
            if len(self._routes) < MAX_ROUTES:
                self._routes.add(route)
                return route
        return "other"

    def observe_request(self, rpc: str, route: str, status: str, seconds: float, fields: Mapping[str, Any]) -> None:
        """One finished request, with the fields of its log line."""
        route = self._route(route)
        engine = str(fields.get("engine") or "")
        labels = (rpc, route, engine, status)
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)
        if status != "ok":
            return
        if rpc == "DoGet":
            cache = str(fields.get("cache") or "")
            self.rows_streamed.labels(route, engine, cache).inc(int(fields.get("rows") or 0))
            self.bytes_streamed.labels(route, engine, cache).inc(int(fields.get("bytes") or 0))
        elif rpc == "DoPut" and "dataset" in fields:
            dataset = self._route(str(fields["dataset"]))
            self.ingested_rows.labels(dataset).inc(int(fields.get("rows") or 0))
            self.ingested_bytes.labels(dataset).inc(int(fields.get("bytes") or 0))

    def watch(self, sources: MetricSources, health: Callable[[], dict[str, bool]] | None = None) -> None:
        """Export the server's state (and its health service's) at every scrape."""
        self.registry.register(StateCollector(sources, health))


class StateCollector(Collector):
    """Reads the server's state at scrape time."""

    def __init__(self, sources: MetricSources, health: Callable[[], dict[str, bool]] | None) -> None:
        self._sources = sources
        self._health = health

    def collect(self) -> Iterator[Metric]:
        yield from self._cache()
        yield from self._routing()
        yield from self._resources()
        yield from self._sync()
        yield from self._server()

    def _cache(self) -> Iterator[Metric]:
        sources = self._sources
        counts = dict(sources.cache_counts())
        lookups = CounterMetricFamily(
            "chrono_cache_lookups",
            "Result cache lookups by result (hit_l1, hit_l2, miss, bypass, refresh)",
            labels=["result"],
        )
        for result in ("hit_l1", "hit_l2", "miss", "bypass", "refresh"):
            lookups.add_metric([result], counts.get(result, 0))
        yield lookups
        for name, key, text in (
            ("chrono_cache_stores", "stores", "Results stored in the cache"),
            ("chrono_cache_too_large", "too_large", "Results too large to cache (streamed through)"),
            ("chrono_cache_coalesced", "coalesced", "Requests served by another request's run (single flight)"),
            ("chrono_cache_version_bumps", "bumps", "Data version bumps (ingest, invalidation)"),
        ):
            yield CounterMetricFamily(name, text, value=counts.get(key, 0))
        ratio = sources.cache_hit_ratio()
        yield GaugeMetricFamily(
            "chrono_cache_hit_ratio",
            "Hits / (hits + misses) since start (NaN before any lookup)",
            value=float("nan") if ratio is None else ratio,
        )
        l1 = sources.cache_l1()
        entries = GaugeMetricFamily("chrono_cache_entries", "Results held by a cache level", labels=["level"])
        entries.add_metric(["l1"], l1.get("entries", 0))
        yield entries
        size = GaugeMetricFamily("chrono_cache_bytes", "Arrow bytes held by a cache level", labels=["level"])
        size.add_metric(["l1"], l1.get("bytes", 0))
        yield size
        if sources.redis_errors is not None:
            yield CounterMetricFamily("chrono_redis_errors", "Failed Redis calls", value=sources.redis_errors())

    def _routing(self) -> Iterator[Metric]:
        decisions = CounterMetricFamily(
            "chrono_routing_decisions", "Engines chosen by the router", labels=["route", "engine", "fallback"]
        )
        for (route, engine, fallback), n in self._sources.routing_decisions().items():
            decisions.add_metric([route, engine, "true" if fallback else "false"], n)
        yield decisions
        state = GaugeMetricFamily(
            "chrono_circuit_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open", labels=["breaker"]
        )
        trips = CounterMetricFamily(
            "chrono_circuit_breaker_trips", "Times a circuit breaker opened", labels=["breaker"]
        )
        for name, snapshot in self._sources.breakers().items():
            state.add_metric([name], BREAKER_STATES.get(snapshot["state"], 2))
            trips.add_metric([name], snapshot["trips"])
        yield state
        yield trips

    def _resources(self) -> Iterator[Metric]:
        monitor = self._sources.resources
        sample = monitor.latest
        if sample is None:
            return
        if sample.duckdb_memory_bytes is not None:
            yield GaugeMetricFamily(
                "chrono_duckdb_memory_bytes", "Memory DuckDB uses", value=sample.duckdb_memory_bytes
            )
        if monitor.duckdb_limit_bytes:
            yield GaugeMetricFamily(
                "chrono_duckdb_memory_limit_bytes", "DuckDB's memory limit", value=monitor.duckdb_limit_bytes
            )
        for name, text, value in (
            ("chrono_process_cpu_ratio", "CPU used by the server, as a share of all cores", sample.cpu_ratio),
            ("chrono_system_cpu_ratio", "CPU used on the machine", sample.system_cpu_ratio),
            ("chrono_system_memory_ratio", "Memory used on the machine", sample.system_memory_ratio),
            ("chrono_data_disk_ratio", "Disk used on the data directory's file system", sample.disk_ratio),
        ):
            # CPU is unknown (NaN: no alert fires on it) until its first measuring window has passed
            yield GaugeMetricFamily(name, text, value=float("nan") if value is None else value)
        slope = monitor.memory_trend()["slope_bytes_per_s"]
        yield GaugeMetricFamily(
            "chrono_memory_rss_slope_bytes_per_second",
            "Least-squares slope of the server's RSS over the last 30 minutes",
            value=float("nan") if slope is None else slope,
        )

    def _sync(self) -> Iterator[Metric]:
        """Replica freshness; the families exist (empty) when sync is off, for alert rules."""
        staleness = GaugeMetricFamily(
            "chrono_sync_staleness_seconds", "Seconds a DuckDB replica may be behind PostgreSQL", labels=["table"]
        )
        behind = GaugeMetricFamily(
            "chrono_sync_changes_behind", "Captured changes not yet applied to a replica", labels=["table"]
        )
        paused = GaugeMetricFamily("chrono_sync_paused", "1 while the sync is paused (PostgreSQL unavailable)")
        applied = CounterMetricFamily("chrono_sync_applied_rows", "Changed rows applied to the replicas")
        if self._sources.sync_status is not None:
            status = self._sources.sync_status()
            for table, state in status["tables"].items():
                if state["staleness_s"] is not None:
                    staleness.add_metric([table], state["staleness_s"])
                behind.add_metric([table], state["changes_behind"])
            paused.add_metric([], 1 if status["state"] == "paused" else 0)
            applied.add_metric([], status["counters"]["changes_applied"])
        yield from (staleness, behind, paused, applied)

    def _server(self) -> Iterator[Metric]:
        sources = self._sources
        yield GaugeMetricFamily(
            "chrono_active_queries", "Queries executing or streaming", value=sources.active_queries()
        )
        yield GaugeMetricFamily("chrono_in_flight_calls", "Flight calls in progress", value=sources.in_flight())
        yield GaugeMetricFamily(
            "chrono_live_subscribers", "Open live metrics streams", value=sources.live_subscribers()
        )
        yield GaugeMetricFamily("chrono_uptime_seconds", "Seconds since the server started", value=sources.uptime_s())
        info = GaugeMetricFamily("chrono_build_info", "Version of the server", labels=["version"])
        info.add_metric([sources.version], 1)
        yield info
        warming = sources.warming_stats()
        yield CounterMetricFamily("chrono_cache_warmed", "Results refilled by cache warming", value=warming["warmed"])
        if self._health is not None:
            health = GaugeMetricFamily(
                "chrono_health_status", "1 when a component is SERVING ('' is the whole server)", labels=["component"]
            )
            for component, serving in self._health().items():
                health.add_metric([component], 1 if serving else 0)
            yield health


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[WSGIServer, int]:
    """Serve the registry over HTTP on a daemon thread; the server and its bound port."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, int(server.server_port)


def stop_metrics(server: WSGIServer) -> None:
    server.shutdown()
    server.server_close()
