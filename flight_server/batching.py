"""Record batches cut to a byte bound: no Flight message the server sends is too large.

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
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa


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
