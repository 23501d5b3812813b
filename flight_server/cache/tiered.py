"""The tiered result cache: L1 in process memory, L2 in Redis, keyed by data versions.

A key covers everything that decides a result: the final SQL, the bound parameters,
the engine, the caller's data scope and the data version of every table read (and of
the named query itself). A data version is a counter, in Redis when configured (shared
by every instance) and in process otherwise; ingestion, sync and `cache.invalidate`
bump it, so invalidation is one increment and stale entries simply expire.

Every version map also carries an epoch, so versions never go back: Redis's epoch
changes when it loses the counters (flight_server.cache.redis_store), and the in-process
counters, used while Redis is unreachable, get a fresh epoch for each outage (other
servers' bumps during an earlier one are unknown here). A server that sees Redis's epoch
change drops its L1, whose entries belong to the old one.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from flight_server.cache.memory import MemoryCache
from flight_server.cache.redis_store import EPOCH, RedisStore, new_epoch
from flight_server.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheKey:
    digest: str
    ttl_s: float


def table_version(table: str) -> str:
    return f"table:{table}"


def route_version(route: str) -> str:
    return f"route:{route}"


def cache_key(sql: str, params: Any, engine: str, scope: str, versions: dict[str, int], ttl_s: float) -> CacheKey:
    material = json.dumps(
        {"sql": sql, "params": params, "engine": engine, "scope": scope, "versions": versions},
        sort_keys=True,
        default=str,
    )
    return CacheKey(hashlib.sha256(material.encode()).hexdigest(), ttl_s)


class TieredCache:
    """L1 then L2 lookups, write-through stores, versions, single-flight and stats."""

    def __init__(self, settings: Settings, redis: RedisStore | None = None) -> None:
        cache = settings.cache
        self.max_entry_bytes = cache.max_entry_bytes
        self.hit_ratio_warning = cache.hit_ratio_warning
        self.l1 = MemoryCache(cache.l1_max_entries, cache.l1_max_bytes, cache.l1_ttl_s)
        self.l2 = redis
        self._lock = threading.Lock()
        self._local_versions: Counter[str] = Counter()
        self._local_epoch: int | None = None  # of the in-process versions; renewed after Redis answers
        self._shared_epoch: int | None = None  # Redis's epoch, as last seen
        self._pending_bumps: Counter[str] = Counter()
        self._usage: Counter[str] = Counter()
        self._inflight: dict[str, threading.Event] = {}
        self.counts: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return self.l1.enabled or self.l2 is not None

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    # -- versions --------------------------------------------------------------------------

    def versions(self, names: Iterable[str]) -> dict[str, int]:
        """The epoch and the data version of each name: Redis's, or in-process ones while it is away."""
        names = sorted(set(names))
        if self.l2 is not None:
            self._flush_pending_bumps()
            shared = self.l2.versions(names)
            if shared is not None:
                self._saw_epoch(shared[EPOCH])
                return shared
        with self._lock:
            if self._local_epoch is None:
                self._local_epoch = new_epoch()
            return {EPOCH: self._local_epoch, **{n: self._local_versions[n] for n in names}}

    def _saw_epoch(self, epoch: int) -> None:
        with self._lock:
            seen, self._shared_epoch = self._shared_epoch, epoch
            self._local_epoch = None  # the next outage starts afresh
        if seen is not None and seen != epoch:
            self.l1.clear()
            self._count("epochs", 1)
            logger.warning(
                "redis lost the data versions (restart without persistence, eviction or flush): "
                "new epoch, memory cache cleared",
                extra={"fields": {"epoch": epoch}},
            )

    def bump(self, tables: Iterable[str]) -> None:
        """New data in these tables: every cached result that read them is stale."""
        self.bump_versions(table_version(t) for t in tables)

    def bump_versions(self, names: Iterable[str]) -> None:
        names = list(names)
        with self._lock:
            self._local_versions.update(names)
        if self.l2 is not None and self.l2.bump(names) is None:
            # Redis is unreachable: apply the bump there as soon as it is back, or a
            # result cached before the outage would be served again afterwards.
            with self._lock:
                self._pending_bumps.update(names)
        self._count("bumps", len(names))

    def _flush_pending_bumps(self) -> None:
        with self._lock:
            pending, self._pending_bumps = self._pending_bumps, Counter()
        if not pending:
            return
        names = [name for name, n in pending.items() for _ in range(n)]
        if self.l2 is None or self.l2.bump(names) is None:
            with self._lock:
                self._pending_bumps.update(pending)

    def invalidate(self, tables: Iterable[str] = (), routes: Iterable[str] = ()) -> list[str]:
        names = [table_version(t) for t in tables] + [route_version(r) for r in routes]
        self.bump_versions(names)
        return names

    @staticmethod
    def matching_routes(pattern: str, routes: Iterable[str]) -> list[str]:
        return sorted(r for r in routes if fnmatch.fnmatchcase(r, pattern))

    # -- results ---------------------------------------------------------------------------

    def lookup(self, key: CacheKey, mode: str) -> tuple[pa.Table | None, str]:
        """A cached table (or None) and the cache status to report."""
        if mode == "bypass" or not self.enabled:
            self._count("bypass", 1)
            return None, "bypass"
        if mode == "refresh":
            self._count("refresh", 1)
            return None, "miss"
        table = self.l1.get(key.digest)
        if table is not None:
            self._count("hit_l1", 1)
            return table, "hit-l1"
        if self.l2 is not None:
            table = self.l2.get_table(key.digest)
            if table is not None:
                self._count("hit_l2", 1)
                self.l1.put(key.digest, table, key.ttl_s)
                return table, "hit-l2"
        self._count("miss", 1)
        return None, "miss"

    def peek(self, key: CacheKey, mode: str) -> str:
        """The status a lookup would report now, without counting it or filling L1."""
        if mode == "bypass" or not self.enabled:
            return "bypass"
        if mode == "refresh":
            return "miss"
        if self.l1.contains(key.digest):
            return "hit-l1"
        if self.l2 is not None and self.l2.has_table(key.digest):
            return "hit-l2"
        return "miss"

    def note_too_large(self) -> None:
        self._count("too_large", 1)

    def store(self, key: CacheKey, table: pa.Table) -> bool:
        if not self.enabled or table.nbytes > self.max_entry_bytes:
            self._count("too_large", int(self.enabled))
            return False
        self.l1.put(key.digest, table, key.ttl_s)
        if self.l2 is not None:
            self.l2.put_table(key.digest, table, key.ttl_s)
        self._count("stores", 1)
        return True

    @contextmanager
    def single_flight(self, digest: str, wait_s: float) -> Iterator[bool]:
        """True for the one caller that runs the query; others wait for it, then get False."""
        with self._lock:
            event = self._inflight.get(digest)
            leader = event is None
            if leader:
                event = self._inflight[digest] = threading.Event()
        assert event is not None
        if leader:
            try:
                yield True
            finally:
                with self._lock:
                    self._inflight.pop(digest, None)
                event.set()
        else:
            self._count("coalesced", 1)
            event.wait(wait_s)
            yield False

    # -- usage, for warming --------------------------------------------------------------

    def count_use(self, member: str) -> None:
        with self._lock:
            self._usage[member] += 1
        if self.l2 is not None:
            self.l2.count_use(member)

    def top_used(self, n: int) -> list[str]:
        if self.l2 is not None:
            shared = self.l2.top_used(n)
            if shared is not None:
                return shared
        with self._lock:
            return [member for member, _ in self._usage.most_common(n)]

    # -- reporting -------------------------------------------------------------------------

    def hit_ratio(self) -> float | None:
        hits = self.counts["hit_l1"] + self.counts["hit_l2"]
        lookups = hits + self.counts["miss"]
        return hits / lookups if lookups else None

    def warnings(self) -> list[str]:
        ratio = self.hit_ratio()
        lookups = self.counts["hit_l1"] + self.counts["hit_l2"] + self.counts["miss"]
        out = []
        if ratio is not None and lookups >= 100 and ratio < self.hit_ratio_warning:
            out.append(f"cache hit ratio is {ratio:.0%} (under {self.hit_ratio_warning:.0%})")
        if self.l2 is not None and self.l2.breaker.state != "closed":
            out.append(f"redis circuit breaker is {self.l2.breaker.state}; answering without L2")
        return out

    def stats(self) -> dict[str, Any]:
        ratio = self.hit_ratio()
        hits_l1, hits_l2, misses = self.counts["hit_l1"], self.counts["hit_l2"], self.counts["miss"]
        return {
            "enabled": self.enabled,
            "hit_ratio": None if ratio is None else round(ratio, 4),
            "l1": {
                **self.l1.stats(),
                "hits": hits_l1,
                "hit_ratio": round(hits_l1 / (hits_l1 + hits_l2 + misses), 4) if misses + hits_l1 + hits_l2 else None,
            },
            "l2": None
            if self.l2 is None
            else {
                **self.l2.stats(),
                "hits": hits_l2,
                "hit_ratio": round(hits_l2 / (hits_l2 + misses), 4) if hits_l2 + misses else None,
            },
            "misses": misses,
            "bypass": self.counts["bypass"],
            "refresh": self.counts["refresh"],
            "stores": self.counts["stores"],
            "too_large": self.counts["too_large"],
            "coalesced": self.counts["coalesced"],
            "version_bumps": self.counts["bumps"],
            "version_epochs": self.counts["epochs"],
            "pending_bumps": sum(self._pending_bumps.values()),
            "warnings": self.warnings(),
        }

    def close(self) -> None:
        if self.l2 is not None:
            self.l2.close()


def build_cache(settings: Settings) -> TieredCache:
    redis = RedisStore(settings.redis) if settings.redis.url else None
    return TieredCache(settings, redis)
