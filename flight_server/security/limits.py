"""Per-caller limits: a request rate (token bucket) and concurrent queries.

Every RPC takes a token from its caller's bucket (RESOURCE_EXHAUSTED when empty).
Every query takes a slot, per caller and in total; when none is free the query waits
in line up to the queue timeout, then gets RESOURCE_EXHAUSTED. No caller is exempt from
the per-caller cap, so one caller never holds every slot: a caller is the token's
subject, or, without authentication, the client connection. A slot is held until its
stream ends; `stalls` ends a stream whose client stopped reading (flight_server.streaming).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flight_server.context import Caller
from flight_server.errors import ResourceExhausted
from flight_server.security.middleware import LOOPBACK_ADMIN
from flight_server.settings import LimitSettings
from flight_server.streaming import StallWatch


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Limiter:
    def __init__(self, settings: LimitSettings) -> None:
        self.settings = settings
        self._lock = threading.Condition()
        self._buckets: dict[str, TokenBucket] = {}
        self._running: dict[str, int] = {}
        self._total = 0
        self.rejected = 0
        self.stalls = StallWatch(settings.stall_timeout_s)

    def admit(self, caller: Caller) -> None:
        """Take one request token for the caller (admins are not rate limited)."""
        if caller.role == "admin" or self.settings.rate_per_s <= 0:
            return
        with self._lock:
            bucket = self._buckets.get(caller.subject)
            if bucket is None:
                bucket = self._buckets[caller.subject] = TokenBucket(self.settings.rate_per_s, self.settings.burst)
            if not bucket.take():
                self.rejected += 1
                raise ResourceExhausted(
                    f"rate limit of {self.settings.rate_per_s:g} requests/s for {caller.subject} exceeded; slow down"
                )

    @staticmethod
    def owner(caller: Caller, peer: str = "") -> str:
        """Whom a slot counts against: the token's subject; without authentication, the connection."""
        return f"{caller.subject}@{peer}" if caller == LOOPBACK_ADMIN else caller.subject

    @contextmanager
    def slot(self, caller: Caller, peer: str = "") -> Iterator[None]:
        """Hold a query slot for the caller while the block runs."""
        self.acquire(caller, peer)
        try:
            yield
        finally:
            self.release(caller, peer)

    def acquire(self, caller: Caller, peer: str = "") -> None:
        """Take a slot, waiting up to the queue timeout; RESOURCE_EXHAUSTED after that."""
        per_caller, total = self.settings.max_concurrent_per_caller, self.settings.max_concurrent_total
        owner = self.owner(caller, peer)
        deadline = time.monotonic() + self.settings.queue_timeout_s
        with self._lock:
            while self._total >= total or self._running.get(owner, 0) >= per_caller:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.rejected += 1
                    if self._running.get(owner, 0) >= per_caller:
                        raise ResourceExhausted(
                            f"too many concurrent queries of yours (at most {per_caller} per caller); "
                            "finish or cancel one, then retry"
                        )
                    raise ResourceExhausted(
                        f"too many concurrent queries on this server (at most {total} in total); retry shortly"
                    )
                self._lock.wait(left)
            self._running[owner] = self._running.get(owner, 0) + 1
            self._total += 1

    def release(self, caller: Caller, peer: str = "") -> None:
        owner = self.owner(caller, peer)
        with self._lock:
            held = self._running.get(owner, 1) - 1
            if held > 0:
                self._running[owner] = held
            else:
                self._running.pop(owner, None)  # connections come and go: keep no entry per one
            self._total = max(0, self._total - 1)
            self._lock.notify_all()

    def deadline_s(self, caller: Caller, engine_deadline_s: float) -> float:
        role_deadline = self.settings.deadlines_s.get(caller.role)
        return min(engine_deadline_s, role_deadline) if role_deadline else engine_deadline_s

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = {"running": self._total, "rejected": self.rejected, "callers": len(self._buckets)}
        return {**out, **self.stalls.stats()}

    def close(self) -> None:
        self.stalls.close()
