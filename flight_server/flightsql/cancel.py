"""Which caller each announced statement belongs to, and which were cancelled.

A statement's FlightInfo announces a query id; its DoGet runs under that id, so
`CancelFlightInfo` (and the older `CancelQuery`) can find the running query. Only the
caller that asked for the FlightInfo (or an admin) may cancel it. A statement cancelled
before its DoGet is remembered: the DoGet then answers CANCELLED. Both tables are
bounded; the oldest entries go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from flight_server.context import Caller

MAX_TRACKED = 10_000


class QueryTickets:
    def __init__(self, limit: int = MAX_TRACKED) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._owners: OrderedDict[str, Caller] = OrderedDict()
        self._cancelled: OrderedDict[str, None] = OrderedDict()

    def announce(self, query_id: str, caller: Caller) -> None:
        with self._lock:
            self._owners[query_id] = caller
            _bound(self._owners, self._limit)

    def owned_by(self, query_id: str, caller: Caller) -> bool:
        with self._lock:
            return self._owners.get(query_id) == caller

    def may_cancel(self, query_id: str, caller: Caller) -> bool:
        with self._lock:
            owner = self._owners.get(query_id)
        return owner is not None and (owner == caller or caller.role == "admin")

    def cancel(self, query_id: str) -> None:
        with self._lock:
            self._cancelled[query_id] = None
            _bound(self._cancelled, self._limit)

    def cancelled(self, query_id: str) -> bool:
        with self._lock:
            return query_id in self._cancelled


def _bound(table: OrderedDict[str, Any], limit: int) -> None:
    while len(table) > limit:
        table.popitem(last=False)
