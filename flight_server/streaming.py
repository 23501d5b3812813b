"""Streams going to the client: batches cut to the message bound, and streams whose
client stopped reading found and ended.

Bounded batches: no Flight message the server sends is too large.

Clients cap the messages they accept (4 MiB is gRPC's default, 16 MiB the ADBC Go
driver's), while an engine batch of 122,880 wide rows is easily 18 MB. Every batch a
DoGet streams (fresh results, cache hits, datasets, Flight SQL) passes through
`bounded_batches`, which cuts it with `RecordBatch.slice`: zero-copy, the slices share
the batch's buffers and the IPC writer sends only the ranges a slice references.

Invariant: each slice's Arrow body (its `nbytes`, dictionaries apart) is at most `body_budget(max_message_bytes)`,
which leaves an eighth of the bound for the message header, buffer padding and the
first batch's app_metadata, so the whole message stays within `max_message_bytes`.
The one exception is a single row larger than the budget: a row cannot be cut, so it
travels alone, one row per message, and that message may exceed the bound.

Stalled streams: found by their lack of progress, then ended.

The Flight server's C++ writer pulls one item at a time from a DoGet generator and
blocks in the gRPC write while the client does not read (HTTP/2 flow control). Between
handing an item over and being asked for the next one, the stream is in the client's
hands; `WatchedStream.items` marks both moments. A reaper thread ends a stream that stays
in the client's hands longer than the stall timeout: the stream's `on_end` runs at once
(the query's cursor is closed, the batches in hand are dropped, its slot is released),
and when the writer comes back the stream fails with TIMED_OUT.

Invariants: `on_end` runs exactly once per stream, at its end or at its stall, and never
while the generator is producing (the reaper ends a stream only while it is handed over,
under the stream's lock, and the generator takes that lock before it goes on). Engine
time is not stall time: the clock runs only while the writer holds the item. pyarrow
cannot cancel a call from the server side, so the call itself stays open until its
client reads again (and gets TIMED_OUT) or disconnects; until then it holds only the
item in the writer and a gRPC thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import pyarrow as pa

from flight_server.errors import TimedOut

logger = logging.getLogger(__name__)

T = TypeVar("T")


class WatchedStream:
    """One watched stream: when it was handed to the writer, and whether it stalled."""

    def __init__(self, watch: StallWatch, label: str, on_end: Callable[[], None]) -> None:
        self.label = label
        self._watch = watch
        self._on_end: Callable[[], None] | None = on_end
        self._lock = threading.Lock()
        self._handed_at: float | None = time.monotonic()  # the writer sends the schema first
        self.stalled = False

    def items(self, items: Iterator[T]) -> Iterator[T]:
        """`items`, each watched while the writer holds it; `on_end` runs once, at the end or at a stall.

        After a stall this raises TimedOut the next time the writer asks for more.
        """
        try:
            self._take_back()
            for item in items:
                with self._lock:
                    self._handed_at = time.monotonic()
                yield item
                self._take_back()
        finally:
            self._watch.forget(self)
            close = getattr(items, "close", None)
            if close is not None:
                close()
            self.end()

    def _take_back(self) -> None:
        """The writer asks for more: the clock stops, or TimedOut when the stream was ended meanwhile."""
        with self._lock:
            self._handed_at = None
            stalled = self.stalled
        if stalled:
            raise TimedOut(
                f"client stopped reading for {self._watch.timeout_s:g} s; the stream was ended: "
                "read results as they arrive, then run the query again"
            )

    def stall(self, now: float, timeout_s: float) -> float | None:
        """End the stream when the writer has held it `timeout_s`; the seconds held, or None."""
        with self._lock:
            if self.stalled or self._handed_at is None or now - self._handed_at < timeout_s:
                return None
            self.stalled = True
            held = now - self._handed_at
        self.end()
        return held

    def end(self) -> None:
        with self._lock:
            on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()


class StallWatch:
    """Watched streams and the reaper that ends those whose client stopped reading."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.ended = 0  # streams ended because their client stopped reading
        self._streams: set[WatchedStream] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._tick_s = max(0.05, min(1.0, timeout_s / 4))
        self._thread = threading.Thread(target=self._reap, name="stall-reaper", daemon=True)
        self._thread.start()

    def watch(self, on_end: Callable[[], None], label: str = "") -> WatchedStream:
        """A stream, in the writer's hands from now on: a stream whose writer never starts
        (its client went away before the schema was sent) is ended at the stall timeout too.
        """
        stream = WatchedStream(self, label, on_end)
        with self._lock:
            self._streams.add(stream)
        return stream

    def forget(self, stream: WatchedStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    @property
    def open(self) -> int:
        with self._lock:
            return len(self._streams)

    def stats(self) -> dict[str, Any]:
        return {"streams": self.open, "stalled_streams_ended": self.ended, "stall_timeout_s": self.timeout_s}

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)

    def _reap(self) -> None:
        while not self._closed.wait(self._tick_s):
            now = time.monotonic()
            with self._lock:
                streams = list(self._streams)
            for stream in streams:
                try:
                    held = stream.stall(now, self.timeout_s)
                except Exception:  # a failing clean-up must not stop the reaper
                    logger.exception("ending a stalled stream failed", extra={"fields": {"stream": stream.label}})
                    held = None
                if stream.stalled:
                    self.forget(stream)  # its generator may never run again to forget it
                if held is not None:
                    self.ended += 1
                    logger.warning(
                        "client stopped reading; stream ended and its resources freed",
                        extra={"fields": {"stream": stream.label, "held_s": round(held, 3)}},
                    )


def body_budget(max_message_bytes: int) -> int:
    """The most Arrow body bytes one message may carry under `max_message_bytes`."""
    return max_message_bytes - max_message_bytes // 8


def bounded_batches(batches: Iterable[pa.RecordBatch], max_message_bytes: int) -> Iterator[pa.RecordBatch]:
    """The rows of `batches`, in order, as zero-copy slices within the byte budget.

    A batch that fits is passed on as it is. One that does not is cut into slices of
    equal row counts sized from its average row; a slice still over the budget (rows
    of very different widths) is cut again the same way, down to single rows.
    """
    budget = body_budget(max_message_bytes)
    for batch in batches:
        pending = [batch]
        while pending:
            piece = pending.pop()
            size = _body_bytes(piece)
            if size <= budget or piece.num_rows <= 1:
                yield piece
                continue
            rows = max(1, min(piece.num_rows - 1, piece.num_rows * budget // size))
            # pushed in reverse so that they come off the stack in row order
            offsets = range(0, piece.num_rows, rows)
            pending.extend(piece.slice(offset, rows) for offset in reversed(offsets))


def bounded_table(table: pa.Table, max_message_bytes: int) -> pa.Table:
    """`table` with its chunks cut by `bounded_batches` (zero-copy), for a RecordBatchStream."""
    pieces = list(bounded_batches(table.to_batches(), max_message_bytes))
    return pa.Table.from_batches(pieces, schema=table.schema)


def _body_bytes(batch: pa.RecordBatch) -> int:
    """Bytes of the batch's own message; dictionaries travel in messages of their own."""
    return sum(
        column.indices.nbytes if isinstance(column, pa.DictionaryArray) else column.nbytes for column in batch.columns
    )
