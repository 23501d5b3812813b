"""L1: Arrow tables in process memory, LRU with a TTL, bounded by entries and bytes."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa


@dataclass
class _Entry:
    table: pa.Table
    nbytes: int
    expires: float


class MemoryCache:
    """Thread-safe LRU of Arrow tables; a hit hands out the table itself (no copy)."""

    def __init__(
        self, max_entries: int, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self._clock = clock  # monotonic seconds; entries expire by it
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0
        self.expirations = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0 and self.ttl_s > 0

    def get(self, key: str) -> pa.Table | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires <= self._clock():
                self._drop(key)
                self.expirations += 1
                return None
            self._entries.move_to_end(key)
            return entry.table

    def contains(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.expires > self._clock()

    def put(self, key: str, table: pa.Table, ttl_s: float) -> bool:
        """Keep `table` for at most min(ttl_s, the L1 TTL); False when it cannot fit."""
        nbytes = table.nbytes
        ttl = min(ttl_s, self.ttl_s)
        if not self.enabled or nbytes > self.max_bytes or ttl <= 0:
            return False
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = _Entry(table, nbytes, self._clock() + ttl)
            self._bytes += nbytes
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                oldest = next(iter(self._entries))
                self._drop(oldest)
                self.evictions += 1
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.nbytes

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_entries": self.max_entries,
                "max_bytes": self.max_bytes,
                "evictions": self.evictions,
                "expirations": self.expirations,
            }
