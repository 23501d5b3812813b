"""The server's life: serving, then draining, then stopped; and the calls in flight.

`DrainMiddlewareFactory` counts every Flight call from its start to its completion
(streams included: a DoGet completes when its last batch is written) and, once the
server drains, refuses new calls with UNAVAILABLE "server is shutting down". The
shutdown sequence (runner.py) waits for the count to reach zero, up to a timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pyarrow.flight as flight

logger = logging.getLogger(__name__)

SERVING, DRAINING, STOPPED = "serving", "draining", "stopped"
SHUTTING_DOWN = "server is shutting down; retry on another instance"


class Lifecycle:
    """The state of the server and the number of Flight calls in flight."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._state = SERVING
        self._in_flight = 0
        self.refused = 0
        self.stopping = threading.Event()  # set once draining starts: long streams end themselves

    @property
    def state(self) -> str:
        with self._cond:
            return self._state

    @property
    def serving(self) -> bool:
        return self.state == SERVING

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def begin_drain(self) -> bool:
        """Refuse new calls from now on; False when draining had already begun."""
        with self._cond:
            if self._state != SERVING:
                return False
            self._state = DRAINING
        self.stopping.set()
        logger.info("draining: new calls are refused", extra={"fields": {"in_flight": self.in_flight}})
        return True

    def stopped(self) -> None:
        with self._cond:
            self._state = STOPPED
        self.stopping.set()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is in flight; False when the timeout passed first."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def enter(self) -> bool:
        """Count a new call; False (and nothing counted) when the server no longer takes calls."""
        with self._cond:
            if self._state != SERVING:
                self.refused += 1
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._in_flight = max(0, self._in_flight - 1)
            self._cond.notify_all()

    def middleware(self) -> DrainMiddlewareFactory:
        return DrainMiddlewareFactory(self)

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {"state": self._state, "in_flight": self._in_flight, "refused_while_draining": self.refused}


class _InFlight(flight.ServerMiddleware):  # type: ignore[misc]
    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle

    def call_completed(self, exception: BaseException | None) -> None:
        self._lifecycle.leave()


class DrainMiddlewareFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Counts calls in flight; refuses new ones while draining.

    Register it last: when an earlier middleware rejects a call, Flight does not tell
    the middleware already started, so counting last is what keeps the count exact.
    """

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str]]) -> _InFlight:
        if not self._lifecycle.enter():
            raise flight.FlightUnavailableError(SHUTTING_DOWN)
        return _InFlight(self._lifecycle)
