"""Running the server: start-up in order, then a graceful shutdown.

Start-up: the health port opens first (everything NOT_SERVING), then the server's parts
are built (demo data, catalogue validation), then the metrics and Flight ports open and
health turns SERVING. Shutdown, on SIGTERM or SIGINT (`flight-server serve`) or
`Runner.shutdown()`: health goes NOT_SERVING and new Flight calls are refused with
UNAVAILABLE; calls in flight get up to `FLIGHT_DRAIN_TIMEOUT_S` to finish (live metrics
streams end at once); queries still running after that are cancelled; then the Flight
server stops, background work (warming, the audit writer, resource sampling) is flushed
and stopped, the cache and the engines are closed, and the ports close. A second signal
during the drain exits at once (code 130).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from wsgiref.simple_server import WSGIServer

import duckdb

from flight_server.app import App
from flight_server.ops.health import HealthService
from flight_server.ops.metrics import serve_metrics, stop_metrics
from flight_server.server import ChronoFlightServer
from flight_server.settings import Settings

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FINAL_GRACE_S = 5.0  # after the drain timeout, for cancelled queries to unwind


class Runner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.health = HealthService(settings)
        self.app: App | None = None
        self.server: ChronoFlightServer | None = None
        self.metrics_server: WSGIServer | None = None
        self.metrics_port = 0
        self.stop_requested = threading.Event()
        self._shutdown_lock = threading.Lock()
        self._shut_down = False
        self.flight_stopped = False

    @property
    def location(self) -> str:
        assert self.server is not None
        scheme = "grpc+tls" if self.settings.tls.cert_file else "grpc"
        return f"{scheme}://{self.settings.host}:{self.server.port}"

    def start(self, prepare: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> None:
        self.health.start()
        logger.info("health checking", extra={"fields": {"port": self.health.port, "status": "NOT_SERVING"}})
        try:
            self.app = App(self.settings, prepare=prepare)
            self.metrics_server, self.metrics_port = serve_metrics(
                self.app.metrics.registry, self.settings.host, self.settings.metrics_port
            )
            self.app.metrics.watch(self.app.metric_sources(), self.health.snapshot)
            self.server = ChronoFlightServer(self.app)
        except BaseException:
            self._close_parts()
            raise
        app = self.app
        self.health.attach(app.health_probes(), lambda: app.lifecycle.serving)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT start the graceful shutdown (main thread only)."""

        def request_stop(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if self.stop_requested.is_set():  # a second signal: the operator will not wait
                logger.warning("second stop signal: exiting without draining", extra={"fields": {"signal": name}})
                logging.shutdown()
                os._exit(130)
            logger.info("stop requested", extra={"fields": {"signal": name}})
            self.stop_requested.set()

        for sig in STOP_SIGNALS:
            signal.signal(sig, request_stop)

    def wait(self) -> None:
        """Block until a stop is requested (signals still run: the wait is in slices)."""
        while not self.stop_requested.wait(0.5):
            pass

    def shutdown(self) -> bool:
        """Drain, stop and close everything; True when every call finished in time."""
        with self._shutdown_lock:
            if self._shut_down:
                return True
            self._shut_down = True
        self.stop_requested.set()
        app, started = self.app, time.monotonic()
        self.health.enter_draining()
        drained = True
        if app is not None:
            app.lifecycle.begin_drain()
            drained = app.lifecycle.wait_idle(self.settings.drain_timeout_s)
            if not drained:
                running = app.running.snapshot()
                logger.warning(
                    "drain timeout passed; cancelling what still runs",
                    extra={"fields": {"in_flight": app.lifecycle.in_flight, "queries": len(running)}},
                )
                for query in running:
                    app.running.cancel(query["query_id"])
                app.lifecycle.wait_idle(FINAL_GRACE_S)
        self.flight_stopped = self._stop_flight()
        self._close_parts(engines=self.flight_stopped)
        logger.info("stopped", extra={"fields": {"drained": drained, "seconds": round(time.monotonic() - started, 3)}})
        return drained

    def _stop_flight(self) -> bool:
        """Stop the Flight server; False when calls were still open after the grace period."""
        server = self.server
        if server is None:
            return True
        # Flight's shutdown waits for every open call, and a client that stopped reading
        # keeps its stream open for good: shut down on a helper thread, wait boundedly.
        done = threading.Thread(target=server.shutdown, name="flight-shutdown", daemon=True)
        done.start()
        done.join(FINAL_GRACE_S)
        if done.is_alive():
            logger.warning("flight calls still open after the grace period; leaving them to the process exit")
            return False
        return True

    def _close_parts(self, engines: bool = True) -> None:
        if self.app is not None:
            self.app.close(engines=engines)
        if self.metrics_server is not None:
            stop_metrics(self.metrics_server)
        self.health.stop()


def run(
    settings: Settings,
    prepare: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    announce: Callable[[Runner], None] | None = None,
) -> int:
    """`flight-server serve`: start, serve until SIGTERM or SIGINT, shut down gracefully.

    During start-up (demo data can take a while) a stop signal is the caller's: the
    command line's handler interrupts the start-up, which unwinds what it had started
    and raises. Once the server listens, the graceful shutdown takes the signals over.
    """
    runner = Runner(settings)
    runner.start(prepare)
    runner.install_signal_handlers()
    if announce is not None:
        announce(runner)
    runner.wait()
    runner.shutdown()
    if not runner.flight_stopped:
        # A stream nobody reads would hold the interpreter's exit (Flight's finalizer
        # waits for it): everything else is flushed and closed, so leave now.
        logging.shutdown()
        os._exit(0)
    return 0
