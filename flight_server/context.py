"""Per-request state: who is calling, the query id, and the running-query registry.

`RequestContext` travels from the RPC handler through router, cache and engine. It
carries the caller's identity, so that later layers can check permissions, scope data
and key caches by it. A `Caller()` built without arguments has no rights (no role, no
projects): every identity with rights is stated where it is made.

`RunningQueries` tracks every query that is executing or streaming and interrupts the
ones past their deadline from a single watchdog thread.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Caller:
    subject: str = "anonymous"
    role: str = "none"  # no role: no permission at all
    projects: tuple[str, ...] | None = ()  # None: every project; (): none

    @property
    def scope(self) -> str:
        """What the caller may see, as a stable string for cache keys."""
        return "*" if self.projects is None else ",".join(sorted(self.projects))


@dataclass
class RequestContext:
    rpc: str
    caller: Caller = field(default_factory=Caller)
    peer: str = ""
    query_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    started: float = field(default_factory=time.monotonic)
    deadline_s: float | None = None  # the caller's query deadline; None: the engine's
    sql_fingerprint: str | None = None  # set for raw SQL, for the audit trail

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000.0


REPEAT_INTERRUPT_S = 0.5  # how often a stopped query that still runs is interrupted again


@dataclass
class RunningQuery:
    query_id: str
    engine: str
    sql: str
    deadline: float
    interrupt: Callable[[], None]
    started: float = field(default_factory=time.monotonic)
    stop_reason: str | None = None  # "deadline" or "cancelled" once interrupted
    interrupted_at: float | None = None

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.interrupted_at = time.monotonic()
            self.interrupt()

    def interrupt_again(self, now: float, every_s: float) -> None:
        """Repeat the interrupt of a stopped query that is still registered.

        A query is registered just before its engine starts it, and an interrupt that
        arrives in between is lost (DuckDB and PostgreSQL interrupt only what runs); so
        until the query unregisters, the watchdog interrupts it again every `every_s`.
        """
        if self.interrupted_at is not None and now - self.interrupted_at >= every_s:
            self.interrupted_at = now
            self.interrupt()


class RunningQueries:
    """Registry of running queries with a watchdog that enforces deadlines.

    The watchdog also stops a query whose client has gone away (`watch_client`), so a
    client that cancels its call frees the engine at once, not at the deadline.
    """

    def __init__(self, tick_s: float = 0.05) -> None:
        self._queries: dict[str, RunningQuery] = {}
        self._clients: dict[str, Callable[[], bool]] = {}
        self._lock = threading.Lock()
        self._tick_s = tick_s
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="query-watchdog", daemon=True)
        self._thread.start()

    def add(self, query: RunningQuery) -> None:
        with self._lock:
            self._queries[query.query_id] = query

    def remove(self, query_id: str) -> None:
        with self._lock:
            self._queries.pop(query_id, None)

    def watch_client(self, query_id: str, gone: Callable[[], bool]) -> None:
        """Stop query `query_id` once `gone()` is true (until `unwatch_client`)."""
        with self._lock:
            self._clients[query_id] = gone

    def unwatch_client(self, query_id: str) -> None:
        with self._lock:
            self._clients.pop(query_id, None)

    def cancel(self, query_id: str) -> bool:
        with self._lock:
            query = self._queries.get(query_id)
        if query is None:
            return False
        query.stop("cancelled")
        return True

    def snapshot(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            queries = list(self._queries.values())
        return [{"query_id": q.query_id, "engine": q.engine, "running_s": round(now - q.started, 3)} for q in queries]

    def __len__(self) -> int:
        with self._lock:
            return len(self._queries)

    def __contains__(self, query_id: object) -> bool:
        with self._lock:
            return query_id in self._queries

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=1)

    def _watch(self) -> None:
        while not self._closed.wait(self._tick_s):
            now = time.monotonic()
            with self._lock:
                overdue = [q for q in self._queries.values() if q.deadline <= now]
                stopped = [q for q in self._queries.values() if q.stop_reason is not None]
                watched = [(self._queries[i], gone) for i, gone in self._clients.items() if i in self._queries]
            for query in stopped:
                query.interrupt_again(now, REPEAT_INTERRUPT_S)
            for query in overdue:
                query.stop("deadline")
            for query, gone in watched:
                if gone():
                    query.stop("cancelled")
