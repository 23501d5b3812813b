"""The server's parts, built once from `Settings` and wired together."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
from sqlglot.errors import SqlglotError

from flight_server import __version__
from flight_server.cache.tiered import build_cache
from flight_server.cache.warming import CacheWarmer
from flight_server.catalog import load_catalog
from flight_server.context import RunningQueries
from flight_server.engines import postgres_schema as oltp
from flight_server.engines.base import Engine
from flight_server.engines.breaker import CircuitBreaker
from flight_server.engines.duckdb import DuckDBEngine
from flight_server.engines.hybrid import HybridEngine
from flight_server.engines.postgres import PostgresEngine
from flight_server.engines.postgres_setup import PostgresSetup
from flight_server.errors import Unavailable, one_line
from flight_server.executor import QueryExecutor
from flight_server.ingest.datasets import DatasetRegistry
from flight_server.ingest.service import IngestService
from flight_server.ops.health import Probe
from flight_server.ops.lifecycle import Lifecycle
from flight_server.ops.live import LiveMetrics, LiveSample
from flight_server.ops.metrics import Metrics, MetricSources
from flight_server.ops.resources import ResourceMonitor
from flight_server.replicas import ReplicaRouter
from flight_server.router import Router, TableRegistry
from flight_server.security.access import load_access
from flight_server.security.audit import AuditLog
from flight_server.security.auth import Authenticator, Credentials
from flight_server.security.limits import Limiter
from flight_server.security.middleware import configured_users
from flight_server.settings import Settings
from flight_server.startup import StartupError
from flight_server.sync.replica import ReplicaStore
from flight_server.sync.service import SyncService
from flight_server.sync.source import ChangeSource

logger = logging.getLogger(__name__)


class RequestStats:
    """Counters of requests by RPC and by outcome, for `health`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_rpc: Counter[str] = Counter()
        self._by_status: Counter[str] = Counter()

    def record(self, rpc: str, status: str) -> None:
        with self._lock:
            self._by_rpc[rpc] += 1
            self._by_status[status] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"by_rpc": dict(self._by_rpc), "by_status": dict(self._by_status)}


@contextlib.contextmanager
def _schemas_file(path: Path, what: str) -> Iterator[None]:
    """A file of the schemas folder that cannot be read or fails its checks stops start-up, in one line."""
    try:
        yield
    except (ValueError, OSError, SqlglotError) as exc:
        raise StartupError(
            f"the {what} {path} is unusable: {one_line(str(exc))}; fix it, "
            f"or point FLIGHT_SCHEMAS_DIR at a folder with a valid {path.name}"
        ) from None


class App:
    """The composition root: builds every part from `Settings`, and closes them.

    A start-up that fails part-way (a broken catalogue, Ctrl-C during demo data, a
    locked database) unwinds what it had built, newest first: threads stopped, the
    PostgreSQL pool and DuckDB closed, so nothing outlives the failed `App`.
    """

    def __init__(self, settings: Settings, prepare: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> None:
        self.settings = settings
        self.version = __version__
        self.started = time.time()
        self.lifecycle = Lifecycle()
        self.metrics = Metrics()
        with contextlib.ExitStack() as unwind:
            self._build(settings, prepare, unwind)
            unwind.pop_all()  # built: from now on close() stops everything, in its own order
        logger.info(
            "server parts ready",
            extra={"fields": {"engines": sorted(self.engines), "named_queries": len(self.catalog)}},
        )

    def _build(
        self,
        settings: Settings,
        prepare: Callable[[duckdb.DuckDBPyConnection], None] | None,
        unwind: contextlib.ExitStack,
    ) -> None:
        self.running = RunningQueries()
        unwind.callback(self.running.close)
        self.duckdb = DuckDBEngine(settings, self.running, prepare)
        unwind.callback(self.duckdb.close)
        self.datasets = DatasetRegistry(settings.datasets_dir, self.duckdb.cursor, self.running)
        self.datasets.open()
        self.duckdb.dataset_rows = self.datasets.row_counts
        self.engines: dict[str, Engine] = {"duckdb": self.duckdb}
        sources: dict[str, Callable[[], dict[str, str]]] = {"duckdb": self.duckdb.refresh_tables}
        self.postgres: PostgresEngine | None = None
        self.postgres_setup: PostgresSetup | None = None
        self.hybrid: HybridEngine | None = None
        if settings.postgres.uri:
            with _schemas_file(settings.schemas_dir / "postgres.sql", "PostgreSQL schema"):
                declared = oltp.declared_tables(settings.schemas_dir)
            self.postgres = PostgresEngine(settings.postgres, self.running, settings.duckdb.query_deadline_s, declared)
            unwind.callback(self.postgres.close)
            self.postgres_setup = PostgresSetup(settings, self.postgres)
            unwind.callback(self.postgres_setup.close)
            self.postgres_setup.start_up()
            self.engines["postgres"] = self.postgres
            sources["postgres"] = self.postgres.refresh_tables
            self.hybrid = HybridEngine(self.duckdb, self.postgres)
        self.registry = TableRegistry(sources)
        breakers = {"postgres": self.postgres.breaker} if self.postgres is not None else {}
        self.router = Router(self.registry, self.engines, breakers)
        self.auth = Authenticator(settings.auth, self._lookup_user)
        self.limits = Limiter(settings.limits)
        unwind.callback(self.limits.close)
        self.audit = AuditLog(settings.postgres.uri)
        unwind.callback(self.audit.close)
        self._configured_users = configured_users(settings.auth.users_file)
        catalog_path = settings.schemas_dir / "catalog.toml"
        with _schemas_file(catalog_path, "named-query catalogue"):
            self.catalog = load_catalog(catalog_path)
        with _schemas_file(settings.schemas_dir / "postgres.sql", "PostgreSQL schema"):
            self.access = load_access(settings.schemas_dir / "postgres.sql")
        self.cache = build_cache(settings)
        unwind.callback(self.cache.close)
        self.ingest = IngestService(settings.ingest, self.datasets, self.cache, self.registry.owner)
        # the executor runs plans on every engine, the hybrid one too; the others own tables
        routable: dict[str, Engine] = dict(self.engines)
        if self.hybrid is not None:
            routable[self.hybrid.name] = self.hybrid
        self.executor = QueryExecutor(
            self.catalog,
            routable,
            self.router,
            self.cache,
            self.duckdb.syntax_error,
            deadline_s=settings.duckdb.query_deadline_s,
            access=self.access,
            max_generated=settings.limits.max_generated_length,
            limits=self.limits,
        )
        with _schemas_file(catalog_path, "named-query catalogue"):
            self.executor.validate_catalog()
        self.sync: SyncService | None = None
        if self.postgres_setup is not None and settings.sync.enabled:
            self.sync = self._start_sync(settings, self.postgres_setup)
            unwind.callback(self.sync.close)
        if self.postgres_setup is not None:
            self.postgres_setup.retry_in_background(self._postgres_ready)
        self.warmer = CacheWarmer(self.executor.warm, self.cache, settings.cache)
        unwind.callback(self.warmer.close)
        self.warmer.warm_soon("start-up")
        self.stats = RequestStats()
        self.resources = ResourceMonitor(
            settings.data_dir, self._duckdb_memory, settings.duckdb.memory_limit, settings.health_interval_s
        )
        unwind.callback(self.resources.close)
        self.live = LiveMetrics(self._live_sample, self.lifecycle)

    def uptime_s(self) -> float:
        return round(time.time() - self.started, 3)

    def breakers(self) -> dict[str, CircuitBreaker]:
        """Every circuit breaker of the server, by the dependency it guards."""
        out = {}
        if self.postgres is not None:
            out["postgres"] = self.postgres.breaker
        if self.cache.l2 is not None:
            out["redis"] = self.cache.l2.breaker
        return out

    def _duckdb_memory(self) -> int | None:
        return int(self.duckdb.health()["memory_bytes"])

    def _live_sample(self) -> LiveSample:
        """The server's state for a row of live metrics."""
        by_status = self.stats.snapshot()["by_status"]
        total = sum(by_status.values())
        try:
            duckdb_memory = self._duckdb_memory()
        except Exception:  # noqa: BLE001 - closing or busy: unknown this time
            duckdb_memory = None
        l1 = self.cache.l1.stats()
        resources = self.resources.latest
        return LiveSample(
            uptime_s=self.uptime_s(),
            active_queries=len(self.running),
            requests_total=total,
            errors_total=total - by_status.get("ok", 0),
            duckdb_memory_bytes=duckdb_memory,
            cache_hit_ratio=self.cache.hit_ratio(),
            cache_l1_entries=l1.get("entries", 0),
            cache_l1_bytes=l1.get("bytes", 0),
            cpu_ratio=resources.cpu_ratio if resources else None,
            system_cpu_ratio=resources.system_cpu_ratio if resources else None,
        )

    def metric_sources(self) -> MetricSources:
        """What the Prometheus state metrics read at every scrape."""
        l2, sync = self.cache.l2, self.sync
        return MetricSources(
            version=self.version,
            uptime_s=self.uptime_s,
            cache_counts=lambda: self.cache.counts,
            cache_hit_ratio=self.cache.hit_ratio,
            cache_l1=self.cache.l1.stats,
            redis_errors=None if l2 is None else lambda: l2.errors,
            routing_decisions=self.router.decisions,
            breakers=lambda: {name: breaker.snapshot() for name, breaker in self.breakers().items()},
            resources=self.resources,
            sync_status=None if sync is None else sync.status,
            active_queries=lambda: len(self.running),
            in_flight=lambda: self.lifecycle.in_flight,
            live_subscribers=lambda: self.live.subscribers,
            warming_stats=self.warmer.stats,
        )

    def health_probes(self) -> dict[str, Probe]:
        """The health checker's probes, for the configured components only."""

        def duckdb_up() -> bool:
            self.duckdb.health()  # answers, or raises the reason
            return True

        probes: dict[str, Probe] = {"duckdb": duckdb_up}
        postgres, l2, sync = self.postgres, self.cache.l2, self.sync
        if postgres is not None:

            def postgres_up() -> bool:
                postgres.health()  # the ping is also the breaker's probe: a recovery is noticed without traffic
                return postgres.breaker.state != "open"

            probes["postgres"] = postgres_up
        if l2 is not None:

            def redis_up() -> bool:
                if not l2.ping():
                    raise Unavailable("ping failed or circuit breaker open")
                return True

            probes["redis"] = redis_up
        if sync is not None:

            def sync_up() -> bool:
                serving, detail = sync.health()
                if not serving:
                    raise Unavailable(detail)
                return True

            probes["sync"] = sync_up
        return probes

    def _lookup_user(self, username: str) -> Credentials | None:
        """Basic-auth users: the configured list first, then approved users of the users table.

        Users of the table log in as analysts scoped to the projects they own.
        """
        if username in self._configured_users:
            return self._configured_users[username]
        uri = self.settings.postgres.uri
        if not uri:
            return None
        try:
            row = oltp.find_user(uri, username)
        except Exception as exc:  # noqa: BLE001 - PostgreSQL down: nobody from the table can log in now
            logger.warning("user lookup failed", extra={"fields": {"error": str(exc).splitlines()[0]}})
            return None
        if row is None:
            return None
        email, password_hash, projects = row
        return Credentials(email, password_hash, "analyst", tuple(projects))

    def _start_sync(self, settings: Settings, setup: PostgresSetup) -> SyncService:
        """Replicas of the OLTP tables in DuckDB, kept current in the background.

        Replicas left by an earlier run serve at once, PostgreSQL reachable or not; the
        loop waits for the PostgreSQL set-up before its first cycle.
        """
        assert settings.postgres.uri is not None
        source = ChangeSource(settings.postgres.uri, settings.schemas_dir, settings.postgres.connect_timeout_s)
        store = ReplicaStore(self.duckdb.cursor)
        sync = SyncService(settings.sync, source, store, self.cache.bump, prepare=setup.require)
        self.executor.planner.replicas = ReplicaRouter(
            sync, self.registry, settings.sync.max_staleness_s, self.access.secret_names()
        )
        sync.start()
        return sync

    def _postgres_ready(self) -> None:
        """PostgreSQL answered after being unreachable at start-up: take it up without a restart."""
        self.registry.refresh()
        if self.hybrid is not None:
            self.hybrid.refresh_tables()
        try:
            self.executor.validate_catalog()  # the named queries that needed PostgreSQL to plan
        except ValueError as exc:  # the live database disagrees with the catalogue: those answer errors
            logger.error("named query does not plan against postgres", extra={"fields": {"error": str(exc)}})
        if self.sync is not None:
            self.sync.wake()

    def close(self, engines: bool = True) -> None:
        """Stop background work (flushing what it holds), then close the cache and the engines.

        `engines=False` leaves the engines open, for a shutdown that gives up on a stream
        a client stopped reading: its reader still belongs to an engine.
        """
        self.lifecycle.stopped()
        if self.postgres_setup is not None:
            self.postgres_setup.close()
        if self.sync is not None:
            self.sync.close()
        self.warmer.close()
        self.resources.close()
        self.audit.close()
        self.limits.close()
        self.running.close()
        self.cache.close()
        if engines:
            for engine in self.engines.values():
                engine.close()
