"""A circuit breaker: stop calling a failing dependency for a while, then probe it.

Closed: calls go through; `failures` failures in a row open it. Open: calls are refused
at once until the open interval has passed; the interval doubles each time a probe
fails, up to `max_open_s`. Half-open: one probe call goes through; its success closes
the breaker, its failure opens it again.
"""

from __future__ import annotations

import threading
import time
from typing import Any

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    def __init__(self, name: str, failures: int = 3, open_s: float = 5.0, max_open_s: float = 120.0) -> None:
        self.name = name
        self._threshold = failures
        self._base_open_s = open_s
        self._max_open_s = max_open_s
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._open_s = open_s
        self._opened_at = 0.0
        self._probing = False
        self.trips = 0

    @property
    def state(self) -> str:
        with self._lock:
            return self._current_state()

    def _current_state(self) -> str:
        if self._state == OPEN and time.monotonic() - self._opened_at >= self._open_s:
            self._state = HALF_OPEN
            self._probing = False
        return self._state

    def retry_in_s(self) -> float:
        """Seconds until the next probe is allowed (0 when calls go through)."""
        with self._lock:
            if self._current_state() != OPEN:
                return 0.0
            return max(0.0, self._open_s - (time.monotonic() - self._opened_at))

    def allow(self) -> bool:
        """May a call go through now? In half-open state only one probe at a time."""
        with self._lock:
            state = self._current_state()
            if state == CLOSED:
                return True
            if state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self._state = CLOSED
            self._failures = 0
            self._open_s = self._base_open_s
            self._probing = False

    def failure(self) -> None:
        with self._lock:
            state = self._current_state()
            self._failures += 1
            if state == HALF_OPEN:
                self._open_s = min(self._open_s * 2, self._max_open_s)
                self._trip()
            elif state == CLOSED and self._failures >= self._threshold:
                self._trip()

    def open_now(self) -> None:
        """Open at once: the dependency is known to be down (e.g. unreachable at start-up)."""
        with self._lock:
            self._failures = max(self._failures, self._threshold)
            self._trip()

    def _trip(self) -> None:
        self._state = OPEN
        self._opened_at = time.monotonic()
        self._probing = False
        self.trips += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            state = self._current_state()
            retry = max(0.0, self._open_s - (time.monotonic() - self._opened_at)) if state == OPEN else 0.0
            return {
                "state": state,
                "consecutive_failures": self._failures,
                "trips": self.trips,
                "retry_in_s": round(retry, 3),
            }
