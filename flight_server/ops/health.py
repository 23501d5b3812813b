"""gRPC health checking (`grpc.health.v1`) on its own port, `FLIGHT_HEALTH_PORT`.

Services: `""` (the whole server), `flight`, `duckdb`, and `postgres`, `redis` and
`sync` only when they are configured (a component that is not configured is NOT_FOUND).
`sync` is SERVING while the replicas are kept current: not paused, nothing waiting in
the retry queue. Every service is NOT_SERVING from the moment the port opens until
the server is ready, and again for good once it drains. While serving, a background
checker refreshes them every `FLIGHT_HEALTH_INTERVAL_S`: DuckDB answers a ping;
PostgreSQL answers a ping and its circuit breaker is not open (the ping is also the
breaker's probe, so PostgreSQL coming back is noticed without traffic); Redis answers a
ping through its breaker. `""` follows `flight` and `duckdb` only: PostgreSQL and
Redis are optional dependencies whose outage the server rides out (DuckDB routes keep
answering, the cache runs on L1), so a load balancer should not take it out for them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from flight_server.errors import ResourceExhausted
from flight_server.settings import Settings

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OVERALL = ""


def components(settings: Settings) -> list[str]:
    """The health services this server registers, `""` first."""
    names = [OVERALL, "flight", "duckdb"]
    if settings.postgres.uri:
        names.append("postgres")
    if settings.redis.url:
        names.append("redis")
    if settings.postgres.uri and settings.sync.enabled:
        names.append("sync")
    return names


Probe = Callable[[], bool]
"""True: serving. False or an exception: not serving (the exception's text is the reason);
RESOURCE_EXHAUSTED counts as serving (every connection busy: the component works, it is full)."""


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HealthService:
    """The grpc.health.v1 server and the checker that keeps its statuses current."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._interval_s = settings.health_interval_s
        self._servicer = health.HealthServicer(
            experimental_non_blocking=True,
            experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="health-watch"),
        )
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="health"))
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, self._server)
        self.components = components(settings)
        self._status = dict.fromkeys(self.components, False)
        for name in self.components:
            self._servicer.set(name, NOT_SERVING)
        self._lock = threading.Lock()
        self._probes: Mapping[str, Probe] | None = None
        self._serving: Callable[[], bool] = lambda: False
        self._draining = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.port = 0
        self.errors: dict[str, str] = {}

    def start(self) -> int:
        """Open the port (every service NOT_SERVING); the bound port."""
        address = bind_address(self._settings.host, self._settings.health_port)
        self.port = self._server.add_insecure_port(address)
        if not self.port:
            raise SystemExit(f"cannot bind the health port {address}: in use? set FLIGHT_HEALTH_PORT")
        self._server.start()
        return self.port

    def attach(self, probes: Mapping[str, Probe], serving: Callable[[], bool]) -> None:
        """The server is ready: check now, then every interval in the background.

        `probes` by component, for the configured components (`duckdb` always); `serving`
        says whether the Flight server takes calls.
        """
        self._probes = probes
        self._serving = serving
        self.check()
        self._thread = threading.Thread(target=self._run, name="health-checker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.check()
            except Exception:  # the checker must outlive any single failure
                logger.exception("health check failed")

    def check(self) -> dict[str, bool]:
        """Probe every component and publish the statuses; what was published."""
        probes = self._probes
        if probes is None or self._draining:
            return self.snapshot()
        status = {"flight": self._serving()}
        for name in self.components:
            if name in probes:
                status[name] = self._probe(name, probes[name])
        status[OVERALL] = status["flight"] and status.get("duckdb", False)
        self._publish(status)
        return self.snapshot()

    def _probe(self, name: str, probe: Probe) -> bool:
        try:
            serving = probe()
        except ResourceExhausted:  # every connection busy: the engine works, it is just full
            return True
        except Exception as exc:  # noqa: BLE001 - any probe failure means not serving
            self.errors[name] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            return False
        self.errors.pop(name, None)
        return serving

    def _publish(self, status: dict[str, bool]) -> None:
        with self._lock:
            if self._draining:
                return
            for name, serving in status.items():
                if self._status.get(name) == serving:
                    continue  # watchers hear about changes only
                self._status[name] = serving
                self._servicer.set(name, SERVING if serving else NOT_SERVING)
                fields = {"component": name or "(server)", "serving": serving, "error": self.errors.get(name)}
                logger.info("health changed", extra={"fields": fields})

    def enter_draining(self) -> None:
        """Every service NOT_SERVING, for good."""
        with self._lock:
            self._draining = True
            self._status = dict.fromkeys(self._status, False)
        self._servicer.enter_graceful_shutdown()
        self._stop.set()

    def snapshot(self) -> dict[str, bool]:
        with self._lock:
            return dict(self._status)

    def stop(self, grace_s: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server.stop(grace_s).wait(grace_s + 1)
