"""The sync loop: PostgreSQL changes applied to the DuckDB replicas, with bounded lag.

A cycle opens one REPEATABLE READ snapshot of PostgreSQL and asks which rows changed
since the snapshot the replicas were last brought to. It re-reads the current rows of
those keys in the new snapshot and applies them in batches, each one DuckDB
transaction; the last batch also records the new snapshot as the position. Changes
are applied by state (delete the keys, insert their current rows), so applying a
batch twice is harmless and commit order in PostgreSQL does not matter. A truncated
table, a table whose columns changed, and a table new to the replica are copied
whole in the same snapshot.

Failures: PostgreSQL unreachable pauses the loop with exponential backoff while the
replicas keep serving (their staleness grows and the router stops using them past
the caller's bound); the loop resumes by itself. Replicas from an earlier run serve from
the start, before PostgreSQL has answered once: the tables tracked then, and how fresh
each was, are read back from the sync state saved with them. `prepare` gates the first
cycle (the PostgreSQL set-up: no change capture before the schema is in place); `wake`
cuts a backoff short once it is done. A table whose rows DuckDB refuses
goes to the retry queue for a whole-table copy with its own backoff, and the other
tables go on.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import adbc_driver_manager
import duckdb
import pyarrow as pa

from flight_server.errors import ChronoError, InvalidArgument, Unavailable, one_line
from flight_server.settings import SyncSettings
from flight_server.sync.replica import ReplicaStore
from flight_server.sync.source import ChangeSource, Snapshot, TableShape
from flight_server.sync.validate import TableCheck, check_table

logger = logging.getLogger(__name__)

_ADVANCE_EVERY_S = 30.0  # how often an idle consumer refreshes its horizon in PostgreSQL


@dataclass
class RetryItem:
    table: str
    reason: str
    attempts: int = 0
    next_at: float = 0.0


def _signature(shape: TableShape) -> list[list[str]]:
    return [list(c) for c in shape.columns]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


class SyncService:
    """Keeps the replicas current; see the module docstring."""

    def __init__(
        self,
        settings: SyncSettings,
        source: ChangeSource,
        store: ReplicaStore,
        on_applied: Callable[[list[str]], None],
        prepare: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self._prepare = prepare
        self._source = source
        self._store = store
        self._on_applied = on_applied
        self._wanted = sorted(set(settings.tables))
        self._lock = threading.Lock()  # one cycle at a time: the loop, sync.run, sync.validate
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by wake() and close(): the loop stops waiting
        self._thread: threading.Thread | None = None
        self._consumer = store.consumer()
        saved = store.state()
        self._position: str | None = saved.get("snapshot")
        self._signatures: dict[str, list[list[str]]] = saved.get("signatures", {})
        self._fresh: dict[str, float] = {t: float(v) for t, v in saved.get("fresh_as_of", {}).items()}
        on_disk = store.tables()
        self._tracked: list[str] = sorted(t for t in self._fresh if t in self._wanted and t in on_disk)
        self._installed = False  # change capture set up in PostgreSQL by this process
        self._retry: dict[str, RetryItem] = {}
        self._failures = 0
        self._last_error: str | None = None
        self._paused_since: float | None = None
        self._advanced_at = 0.0
        self._last_validation: dict[str, Any] | None = None
        self._validated_at = time.time()
        self._lags: deque[float] = deque(maxlen=20_000)
        self.counters = {"cycles": 0, "changes_applied": 0, "batches": 0, "table_copies": 0, "repairs": 0}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sync", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next cycle now rather than at the end of the current wait or backoff."""
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._source.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
                if self.settings.validate_interval_s and time.time() - self._validated_at > (
                    self.settings.validate_interval_s
                ):
                    self.validate(None, repair=True)
                wait = self.settings.poll_interval_s
            except Unavailable:
                wait = self._backoff()
            except Exception:  # the loop must outlive any single failure
                logger.exception("sync cycle failed")
                wait = self._backoff()
            self._wake.wait(wait)
            self._wake.clear()

    def _backoff(self) -> float:
        delay = min(self.settings.backoff_max_s, self.settings.backoff_initial_s * 2.0 ** max(0, self._failures - 1))
        return float(delay * random.uniform(0.8, 1.2))

    # -- one cycle ---------------------------------------------------------------------

    def run_once(self) -> dict[str, Any]:
        """Bring the replicas to PostgreSQL's current state; what was applied."""
        return self._locked_cycle(None, repair=False)[0]

    def _locked_cycle(self, validate: list[str] | None, repair: bool) -> tuple[dict[str, Any], list[TableCheck]]:
        with self._lock:
            try:
                result = self._cycle(validate, repair)
            except (adbc_driver_manager.Error, OSError, Unavailable) as exc:
                self._failed(exc)
                raise Unavailable(f"sync paused: PostgreSQL is unavailable ({self._last_error})") from None
        if self._failures:
            logger.info("sync resumed", extra={"fields": {"after_failures": self._failures}})
        self._failures, self._last_error, self._paused_since = 0, None, None
        return result

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        self._last_error = one_line(str(exc).replace("[libpq] ", "")) or type(exc).__name__
        if self._paused_since is None:
            self._paused_since = time.time()
            logger.warning("sync paused", extra={"fields": {"error": self._last_error}})

    def _cycle(self, validate: list[str] | None, repair: bool) -> tuple[dict[str, Any], list[TableCheck]]:
        """One snapshot: apply what changed, then compare the `validate` tables in that same snapshot."""
        if not self._installed or not self._tracked:
            if self._prepare is not None:
                self._prepare()
            tracked = self._source.install(self._wanted)
            if self._position is not None and self._source.position_lost(self._consumer, self.settings.retention_s):
                logger.warning("PostgreSQL cannot replay changes from the saved position; copying every table again")
                self._position = None
            self._source.register(self._consumer)
            self._tracked, self._installed = tracked, True
        applied: dict[str, int] = {}
        since = self._position
        with self._source.snapshot() as snap:
            shapes = snap.shapes(self._tracked)
            delta, total = snap.delta(since, self._tracked)
            replicas = self._store.tables()
            now = time.time()
            whole = {t for t in shapes if self._position is None or t not in replicas}
            whole |= {t for t, c in delta.items() if c.truncated}
            for table, shape in shapes.items():
                if table in replicas and self._signatures.get(table) not in (None, _signature(shape)):
                    logger.warning("columns of %s changed in PostgreSQL; copying it again", table)
                    whole.add(table)
            whole |= {t for t, item in self._retry.items() if item.next_at <= now and t in shapes}
            copies = {t: snap.rows(shapes[t]) for t in sorted(whole)}
            skip = whole | set(self._retry)
            incremental = {t: c.keys for t, c in delta.items() if t not in skip and t in shapes and c.keys}
            applied = self._apply(snap, shapes, copies, incremental)
            self.counters["cycles"] += 1
            if since is not None and total:
                self._record_lags(snap.change_times(since, self._tracked))
            checks = [
                check_table(self._store, shapes[t], snap.rows(shapes[t]), self.settings.validate_ranges, repair)
                for t in validate or []
                if t in shapes and t not in self._retry
            ]
        self._advance(bool(applied))
        result = {"snapshot": self._position, "changes": total, "applied": applied, "copied": sorted(copies)}
        return result, checks

    def _apply(
        self,
        snap: Snapshot,
        shapes: dict[str, TableShape],
        copies: dict[str, pa.Table],
        incremental: dict[str, frozenset[str]],
    ) -> dict[str, int]:
        """Write everything in batches; the last transaction records the new position."""
        batches = self._batches(incremental)
        applied: dict[str, int] = {}
        for i, changes in enumerate(batches):
            last = i == len(batches) - 1
            replaced = copies if last else {}  # whole copies ride with the batch that records the position
            rows = {
                t: (keys, shapes[t].key_type, snap.rows(shapes[t], keys))
                for t, keys in changes.items()
                if t not in self._retry
            }
            try:
                state = self._state_after(snap, shapes, set(replaced)) if last else None
                self._store.apply(rows, replaced, state or {})
            except duckdb.Error:  # DuckDB refused something: apply table by table, park the refused
                rows, replaced = self._isolate(rows, replaced)
                state = self._state_after(snap, shapes, set(replaced)) if last else None
                if state is not None:
                    self._store.apply({}, {}, state)
            if rows or replaced:  # before freshness moves: no cached result may outlive these rows
                self._on_applied(sorted({*rows, *replaced}))
            if state is not None:
                self._position, self._fresh, self._signatures = (
                    state["snapshot"],
                    state["fresh_as_of"],
                    state["signatures"],
                )
            for t, (keys, _, _) in rows.items():
                applied[t] = applied.get(t, 0) + len(keys)
            for t, table in replaced.items():
                applied[t] = applied.get(t, 0) + table.num_rows
                self._retry.pop(t, None)
            self.counters["batches"] += 1
            self.counters["changes_applied"] += sum(len(k) for k, _, _ in rows.values())
            self.counters["table_copies"] += len(replaced)
        return applied

    def _batches(self, incremental: dict[str, frozenset[str]]) -> list[dict[str, list[str]]]:
        """Changed keys by table, in batches of at most `batch_keys` keys (the last may be empty)."""
        batches: list[dict[str, list[str]]] = [{}]
        size = 0
        for table, keys in sorted(incremental.items()):
            for key in sorted(keys):
                if size == self.settings.batch_keys:
                    batches.append({})
                    size = 0
                batches[-1].setdefault(table, []).append(key)
                size += 1
        return batches

    def _isolate(
        self, rows: dict[str, Any], replaced: dict[str, pa.Table]
    ) -> tuple[dict[str, Any], dict[str, pa.Table]]:
        """Apply each table alone; those DuckDB refuses wait in the retry queue for a whole copy."""
        kept_rows, kept_replaced = {}, {}
        for table in sorted({*rows, *replaced}):
            mine = {table: rows[table]} if table in rows else {}
            whole = {table: replaced[table]} if table in replaced else {}
            try:
                self._store.apply(mine, whole, {})
            except duckdb.Error as exc:
                self._park([table], exc)
                continue
            kept_rows.update(mine)
            kept_replaced.update(whole)
        return kept_rows, kept_replaced

    def _park(self, failed: list[str], exc: BaseException) -> None:
        for table in failed:
            item = self._retry.setdefault(table, RetryItem(table, ""))
            item.attempts += 1
            item.reason = one_line(str(exc))
            delay = min(self.settings.backoff_max_s, self.settings.backoff_initial_s * 2 ** (item.attempts - 1))
            item.next_at = time.time() + delay
            logger.warning("replica copy failed; queued for retry", extra={"fields": {"table": table, **vars(item)}})

    def _state_after(self, snap: Snapshot, shapes: dict[str, TableShape], copied: set[str]) -> dict[str, Any]:
        """The position and freshness to record once this snapshot is fully applied."""
        parked = set(self._retry) - copied
        fresh, signatures = dict(self._fresh), dict(self._signatures)
        for table, shape in shapes.items():
            if table not in parked:
                fresh[table] = snap.taken_at
                signatures[table] = _signature(shape)
        return {"snapshot": snap.text, "fresh_as_of": fresh, "signatures": signatures}

    def _record_lags(self, times: list[float]) -> None:
        """Lag of each applied change: from its write in PostgreSQL to now, after the commit."""
        done = time.time()
        self._lags.extend(done - at for at in times)

    def _advance(self, changed: bool) -> None:
        if self._position is None or (not changed and time.monotonic() - self._advanced_at < _ADVANCE_EVERY_S):
            return
        self._source.advance(self._consumer, self._position, self.settings.retention_s)
        self._advanced_at = time.monotonic()

    # -- validation ----------------------------------------------------------------------

    def validate(self, tables: Iterable[str] | None, repair: bool) -> dict[str, Any]:
        """Bring the replicas current, then compare them with PostgreSQL in that snapshot."""
        wanted = sorted(set(tables)) if tables is not None else None
        unknown = [t for t in wanted or [] if t not in self._wanted]
        if unknown:
            raise InvalidArgument(f"table '{unknown[0]:.60}' is not replicated; replicated: {', '.join(self._wanted)}")
        _, checks = self._locked_cycle(wanted or list(self._wanted), repair)
        repaired = [c.table for c in checks if c.repaired]
        self.counters["repairs"] += len(repaired)
        if repaired:
            logger.warning("replica ranges repaired", extra={"fields": {"tables": repaired}})
            self._on_applied(repaired)
        self._validated_at = time.time()
        self._last_validation = {
            "at": self._validated_at,
            "consistent": all(not c.mismatched for c in checks),
            "tables": [c.to_json() for c in checks],
        }
        return self._last_validation

    # -- what the rest of the server asks ------------------------------------------------

    def staleness(self, table: str) -> float | None:
        """Seconds the replica of `table` may be behind PostgreSQL; None when it has none."""
        fresh = self._fresh.get(table)
        if fresh is None or table in self._retry or table not in self._tracked:
            return None
        return max(0.0, time.time() - fresh)

    def _running(self) -> bool:
        return self._installed and bool(self._tracked)

    def status(self) -> dict[str, Any]:
        behind: dict[str, int] = {}
        if self._position is not None and self._paused_since is None:
            try:
                with self._source.snapshot() as snap:
                    behind = snap.pending(self._position, self._tracked)
            except (adbc_driver_manager.Error, OSError, ChronoError) as exc:
                self._last_error = one_line(str(exc))
        tables = {}
        for table in self._wanted:
            staleness = self.staleness(table)
            tables[table] = {
                "replicated": table in self._tracked and table in self._fresh,
                "staleness_s": None if staleness is None else round(staleness, 3),
                "changes_behind": behind.get(table, 0),
                "retry": vars(self._retry[table]) if table in self._retry else None,
            }
        lags = list(self._lags)
        return {
            "state": "paused" if self._paused_since is not None else "running" if self._running() else "starting",
            "paused_since": self._paused_since,
            "last_error": self._last_error,
            "consumer": self._consumer,
            "position": self._position,
            "tables": tables,
            "retry_queue": [vars(item) for item in self._retry.values()],
            "lag_s": {"p50": _percentile(lags, 0.5), "p99": _percentile(lags, 0.99), "samples": len(lags)},
            "counters": dict(self.counters),
            "last_validation": self._last_validation,
            "max_staleness_s": self.settings.max_staleness_s,
        }

    def health(self) -> tuple[bool, str]:
        """(serving, detail) for the health service and the `health` action."""
        if self._paused_since is not None:
            return False, f"sync paused for {time.time() - self._paused_since:.0f} s: {self._last_error}"
        if self._retry:
            return False, f"replica copies waiting for retry: {', '.join(sorted(self._retry))}"
        if not self._running():
            return False, "sync has not completed its first cycle"
        return True, "ok"
