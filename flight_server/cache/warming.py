"""Cache warming: re-run the most used named queries in the background.

After start-up and after an invalidation the hottest entries are gone (or were never
there); the warmer re-runs the top named queries, as their callers ran them, so the next
dashboard load is a hit. Bounded in count (`warm_top_n`) and concurrency
(`warm_concurrency`); one warming pass at a time, with at most one more queued.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from flight_server.cache.tiered import TieredCache
from flight_server.commands import Command, parse_command
from flight_server.context import Caller, RequestContext
from flight_server.settings import CacheSettings

logger = logging.getLogger(__name__)


class CacheWarmer:
    """Warms the cache through `warm(command, ctx)`: it refills the entry if it is missing, True when it ran."""

    def __init__(
        self, warm: Callable[[Command, RequestContext], bool], cache: TieredCache, settings: CacheSettings
    ) -> None:
        self._warm = warm
        self._cache = cache
        self._top_n = settings.warm_top_n if cache.enabled else 0
        self._pool = ThreadPoolExecutor(max_workers=settings.warm_concurrency, thread_name_prefix="cache-warm")
        self._lock = threading.Lock()
        self._running = False
        self._pending = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.warmed = 0
        self.failures = 0

    def warm_soon(self, reason: str) -> None:
        """Start a warming pass in the background (or queue one if a pass is running)."""
        if self._top_n == 0:
            return
        with self._lock:
            if self._closed:
                return
            if self._running:
                self._pending = True
                return
            self._running = True
        self._thread = threading.Thread(target=self._passes, args=(reason,), name="cache-warmer", daemon=True)
        self._thread.start()

    def _passes(self, reason: str) -> None:
        while True:
            members = self._cache.top_used(self._top_n)
            try:
                futures = [self._pool.submit(self._warm_one, member) for member in members]
            except RuntimeError:  # closed meanwhile: the pool takes no more work
                futures = []
            wait(futures)
            self.passes += 1
            logger.info(
                "cache warming pass done",
                extra={"fields": {"reason": reason, "queries": len(members), "warmed": self.warmed}},
            )
            with self._lock:
                if self._pending and not self._closed:
                    self._pending = False
                    reason = "queued"
                    continue
                self._running = False
                return

    def _warm_one(self, member: str) -> None:
        try:
            entry = json.loads(member)
            command = parse_command(entry["c"].encode())
            scope = entry["s"]
            caller = Caller(
                subject="cache-warmer",
                role="admin",
                projects=None if scope == "*" else tuple(scope.split(",")),
            )
            ctx = RequestContext(rpc="warm", caller=caller)
            if self._warm(command, ctx):
                self.warmed += 1
        except Exception as exc:  # noqa: BLE001 - a warming failure must never surface anywhere else
            self.failures += 1
            logger.warning("cache warming failed", extra={"fields": {"error": str(exc).splitlines()[0][:200]}})

    def stats(self) -> dict[str, Any]:
        return {"passes": self.passes, "warmed": self.warmed, "failures": self.failures, "top_n": self._top_n}

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop warming: queued queries are dropped, those already running get `timeout_s` to finish."""
        with self._lock:
            self._closed = True
            self._pending = False
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._thread is not None:
            self._thread.join(timeout_s)
