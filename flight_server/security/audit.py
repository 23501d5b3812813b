"""The audit trail: every RPC with caller, role, action, query, rows, bytes, status, time.

Each entry goes to the structured log at once and, when PostgreSQL is configured, into
`audit_logs` in batches from a background thread, so queries never wait for it. The
queue is bounded: when PostgreSQL cannot keep up or is down, entries beyond it are
counted as dropped (the structured log still has them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from typing import Any

import adbc_driver_postgresql.dbapi as pg
import pyarrow as pa

logger = logging.getLogger("flight_server.audit")


def fingerprint(sql: str) -> str:
    """A short, stable id of an SQL text (whitespace and case folded), never the text."""
    # surrogatepass: a text that is not valid Unicode is refused later, but still fingerprinted
    return hashlib.sha256(" ".join(sql.lower().split()).encode("utf-8", "surrogatepass")).hexdigest()[:16]


class AuditLog:
    def __init__(self, uri: str | None, batch: int = 200, interval_s: float = 1.0, capacity: int = 10_000) -> None:
        self._uri = uri
        self._batch = batch
        self._interval_s = interval_s
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=capacity)
        self._closed = threading.Event()
        self.written = 0
        self.dropped = 0
        self._thread: threading.Thread | None = None
        if uri:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def record(self, entry: dict[str, Any]) -> None:
        logger.info("audit", extra={"fields": entry})
        if self._thread is None:
            return
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1

    def _drain(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        while len(entries) < self._batch:
            try:
                entries.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return entries

    def _run(self) -> None:
        while not self._closed.wait(self._interval_s):
            self.flush()
        self.flush()

    def flush(self) -> None:
        while entries := self._drain():
            try:
                self._write(entries)
                self.written += len(entries)
            except Exception as exc:  # noqa: BLE001 - PostgreSQL down: keep serving, count the loss
                self.dropped += len(entries)
                logger.warning("audit entries not written", extra={"fields": {"error": str(exc).splitlines()[0]}})
                return

    def _write(self, entries: list[dict[str, Any]]) -> None:
        assert self._uri is not None
        table = pa.table(
            {
                "action": [e.get("rpc", "?") for e in entries],
                "details": [json.dumps(e, default=str) for e in entries],
            }
        )
        with pg.connect(self._uri, autocommit=True) as conn, conn.cursor() as cur:
            cur.adbc_ingest("_audit_batch", table, mode="replace", temporary=True)
            cur.execute("INSERT INTO audit_logs (action, details) SELECT action, details::jsonb FROM _audit_batch")

    def stats(self) -> dict[str, Any]:
        return {"written": self.written, "dropped": self.dropped, "queued": self._queue.qsize()}

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
