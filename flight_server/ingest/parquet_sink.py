"""`ParquetSink`: the rows of one put (or compaction) into partitioned ZSTD Parquet files.

Memory stays within `buffer_bytes` however many partitions the rows touch, and every file
gets full row groups: rows are spilled to one Arrow IPC file per partition as they arrive,
and each partition's spill becomes one Parquet file at the end. Every file is written under
a temporary name in its target directory, fsynced and renamed; directories are fsynced.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flight_server.ingest.datasets import TEMP_PREFIX, DataFile, columns_fingerprint, fsync_path
from flight_server.settings import IngestSettings

logger = logging.getLogger(__name__)

MAX_OPEN_FILES = 512  # open spill files per put; past it a partition continues in a new one
SINK_THREADS = 2  # partitions encoded and compressed at once
_DICTIONARY_SAMPLE_ROWS = 2_048  # rows that decide which columns are dictionary-encoded
_FSYNC_THREADS = 8  # directory fsyncs wait on the disk, not the CPU
_SPLIT_QUEUE = 2  # received batches waiting to be grouped by partition


@dataclass
class _Spill:
    """The open Arrow IPC spill file of one partition."""

    file: pa.NativeFile
    writer: pa.ipc.RecordBatchStreamWriter


class ParquetSink:
    """Rows of one put, partitioned, into one ZSTD Parquet file per partition.

    Two steps keep memory bounded by `buffer_bytes`, however many partitions a put
    touches, and give every file full row groups. Each batch's rows are grouped by
    partition as it arrives (on a second thread); each time a quarter of `buffer_bytes`
    is buffered, a third thread appends each partition's rows to its Arrow IPC spill file
    (temporary names, on disk) while the next quarter fills. `finish` turns each
    partition's spill into one Parquet file, in row groups of up to `row_group_rows` rows
    and an eighth of `buffer_bytes`, two partitions at a time; it fsyncs every file and
    renames it into place. `abort` removes everything the sink created.
    """

    def __init__(
        self,
        directory: Path,
        prefix: str,
        schema: pa.Schema,
        settings: IngestSettings,
        partition_of: Callable[[int], str] = str,
    ) -> None:
        self._directory = directory
        self._prefix = prefix
        self._schema = schema
        self._partition_of = partition_of
        self._zstd_level = settings.zstd_level
        self._row_group_rows = settings.row_group_rows
        # peak Arrow memory: while a quarter spills (and its sorted copy, another quarter) the
        # next quarter fills; at the end, each writer thread holds a row group read back and
        # its contiguous copy, an eighth of buffer_bytes each
        self._spill_bytes = max(1, settings.buffer_bytes // 4)
        self._group_bytes = max(1, settings.buffer_bytes // (4 * SINK_THREADS))
        self._buffer: dict[str, list[pa.RecordBatch]] = {}
        self._buffered = 0
        self._splitter = ThreadPoolExecutor(1, thread_name_prefix="parquet-split")
        self._splitting: deque[Future[None]] = deque()
        self._spiller = ThreadPoolExecutor(1, thread_name_prefix="parquet-spill")
        self._pending: Future[None] | None = None
        self._open: OrderedDict[str, _Spill] = OrderedDict()
        self._spills: dict[str, list[Path]] = {}  # every spill file of each partition, in order
        self._created: list[Path] = []  # every file this sink made, for abort()
        self._new_folders: set[Path] = set()

    def write(self, batch: pa.RecordBatch, codes: np.ndarray | None = None, partition: str = "") -> None:
        """Take a batch whose rows go to the partitions `codes` name (or all to `partition`).

        A second thread groups the rows by partition into a copy while the caller receives
        the next batch; at most `_SPLIT_QUEUE` received batches (gRPC memory) wait for it.
        """
        if not batch.num_rows:
            return
        while len(self._splitting) >= _SPLIT_QUEUE:
            self._splitting.popleft().result()
        self._splitting.append(self._splitter.submit(self._buffer_rows, batch, codes, partition))

    def _drain(self) -> None:
        while self._splitting:
            self._splitting.popleft().result()

    def _buffer_rows(self, batch: pa.RecordBatch, codes: np.ndarray | None, partition: str) -> None:
        """On the split thread: group a batch's rows by partition, spill when a quarter is buffered."""
        for part, rows in self._split(batch, codes, partition):
            self._buffer.setdefault(part, []).append(rows)
        self._buffered += batch.nbytes
        if self._buffered >= self._spill_bytes:
            self._spill_soon()

    def _split(
        self, batch: pa.RecordBatch, codes: np.ndarray | None, partition: str
    ) -> Iterator[tuple[str, pa.RecordBatch]]:
        if codes is None:
            yield partition, batch
            return
        order = np.argsort(codes, kind="stable")
        ordered = codes[order]
        starts = np.concatenate(([0], np.flatnonzero(np.diff(ordered)) + 1))
        ends = np.append(starts[1:], len(ordered))
        rows = batch.take(pa.array(order))  # also when one partition: the copy frees the gRPC buffer
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            yield self._partition_of(int(ordered[start])), rows.slice(start, end - start)

    def _spill_soon(self) -> None:
        self._wait()  # one spill at a time: with the buffer filling meanwhile, within buffer_bytes
        buffer, self._buffer, self._buffered = self._buffer, {}, 0
        self._pending = self._spiller.submit(self._spill, buffer)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _spill(self, buffer: dict[str, list[pa.RecordBatch]]) -> None:
        """Each partition's buffered rows, copied together, as one message to its spill file."""
        for partition, batches in buffer.items():
            rows = pa.Table.from_batches(batches, self._schema).combine_chunks()
            self._spill_writer(partition).writer.write_table(rows)
        buffer.clear()
        release_memory()

    def _spill_writer(self, partition: str) -> _Spill:
        spill = self._open.get(partition)
        if spill is not None:
            self._open.move_to_end(partition)
            return spill
        if len(self._open) >= MAX_OPEN_FILES:  # the partition continues in a new spill file
            oldest = self._open.popitem(last=False)[1]
            oldest.writer.close()
            oldest.file.close()
        folder = self._make_folder(partition)
        files = self._spills.setdefault(partition, [])
        path = folder / f"{TEMP_PREFIX}{self._prefix}-{len(self._spills) - 1}-{len(files)}.arrows"
        self._created.append(path)
        files.append(path)
        file = pa.OSFile(str(path), "wb")
        spill = self._open[partition] = _Spill(file, pa.ipc.new_stream(file, self._schema))
        return spill

    def _make_folder(self, partition: str) -> Path:
        """The partition's folder, created (and remembered, to fsync its parent) if missing."""
        folder = self._directory / partition if partition else self._directory
        missing = [f for f in (folder, *folder.parents) if f.is_relative_to(self._directory.parent)]
        missing = [f for f in missing if not f.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        self._new_folders.update(missing)
        return folder

    def finish(self, ensure_file: bool = False) -> list[DataFile]:
        """Write each partition's Parquet file and make it durable under its final name."""
        self._drain()
        self._splitter.shutdown()
        if self._buffer:
            self._spill_soon()
        self._wait()
        self._spiller.shutdown()
        release_memory()  # what the first step freed, before the second allocates
        while self._open:
            spill = self._open.popitem()[1]
            spill.writer.close()
            spill.file.close()
        partitions = list(self._spills) or ([""] if ensure_file else [])
        started = time.perf_counter()
        with ThreadPoolExecutor(SINK_THREADS, thread_name_prefix="parquet-sink") as pool:
            futures = [pool.submit(self._convert, i, p) for i, p in enumerate(partitions)]
            wait(futures)
        files = [future.result() for future in futures]
        written = time.perf_counter()
        for temp, final, _, _ in files:
            os.rename(temp, final)
        # the renames live in the partition folders, new folders in their parents
        folders = {final.parent for _, final, _, _ in files} | {folder.parent for folder in self._new_folders}
        with ThreadPoolExecutor(_FSYNC_THREADS, thread_name_prefix="fsync") as pool:
            list(pool.map(fsync_path, folders))
        logger.debug(
            "parquet sink finished",
            extra={
                "fields": {
                    "files": len(files),
                    "parquet_s": round(written - started, 3),
                    "fsync_s": round(time.perf_counter() - written, 3),
                }
            },
        )
        fingerprint = columns_fingerprint(self._schema.names)
        return [
            DataFile(final.relative_to(self._directory).as_posix(), rows, final.stat().st_size, partition, fingerprint)
            for _, final, rows, partition in files
        ]

    def _convert(self, index: int, partition: str) -> tuple[Path, Path, int, str]:
        """One partition's spill files into one Parquet file (temporary name, fsynced)."""
        name = f"{self._prefix}-{index}.parquet"
        folder = self._make_folder(partition)  # an empty new dataset has no spill, nor a folder yet
        temp, final = folder / f"{TEMP_PREFIX}{name}", folder / name
        self._created += [temp, final]
        writer: pq.ParquetWriter | None = None
        rows = 0
        try:
            for group in self._groups(partition):
                if writer is None:
                    writer = self._parquet_writer(temp, group)
                writer.write_table(group, self._row_group_rows)
                rows += group.num_rows
            if writer is None:
                writer = self._parquet_writer(temp, self._schema.empty_table())
        finally:
            if writer is not None:
                writer.close()
        fsync_path(temp)
        return temp, final, rows, partition

    def _groups(self, partition: str) -> Iterator[pa.Table]:
        """The partition's spilled rows, in tables of up to one row group each (deletes the spills)."""
        group: list[pa.RecordBatch] = []
        rows = size = 0
        for path in self._spills.get(partition, []):
            with pa.OSFile(str(path), "rb") as source:
                for batch in pa.ipc.open_stream(source):
                    group.append(batch)
                    rows, size = rows + batch.num_rows, size + batch.nbytes
                    if rows >= self._row_group_rows or size >= self._group_bytes:
                        yield pa.Table.from_batches(group, self._schema).combine_chunks()  # encodes much faster
                        group, rows, size = [], 0, 0
            path.unlink()
        if group:
            yield pa.Table.from_batches(group, self._schema).combine_chunks()

    def _parquet_writer(self, path: Path, sample: pa.Table) -> pq.ParquetWriter:
        """A ZSTD writer; dictionary encoding only for the columns that repeat in `sample`.

        A dictionary on a column of mostly distinct values (ids, URLs) costs time and space.
        """
        head = sample.slice(0, _DICTIONARY_SAMPLE_ROWS)
        dictionary = [f.name for f, column in zip(self._schema, head.columns, strict=True) if _repeats(column)]
        return pq.ParquetWriter(
            str(path), self._schema, compression="zstd", compression_level=self._zstd_level, use_dictionary=dictionary
        )

    def abort(self) -> None:
        """Remove every file of this sink, renamed or not (best effort, never raises)."""
        for future in self._splitting:
            future.cancel()
        with contextlib.suppress(BaseException):
            self._drain()
        self._splitter.shutdown(cancel_futures=True)
        with contextlib.suppress(BaseException):
            self._wait()
        self._spiller.shutdown(cancel_futures=True)
        while self._open:
            spill = self._open.popitem()[1]
            with contextlib.suppress(Exception):
                spill.writer.close()
                spill.file.close()
        for path in self._created:
            path.unlink(missing_ok=True)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _malloc_trim()


def release_memory() -> None:
    """Give freed memory back to the system: the Arrow pool's, and the C heap's (gRPC buffers).

    Received batches are allocated by gRPC on the C heap; freed in a different order than
    allocated they leave it fragmented, and the process keeps the memory of a large put
    long after. Trimming after each spill keeps a put's footprint at what it holds.
    """
    pa.default_memory_pool().release_unused()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _repeats(column: pa.ChunkedArray) -> bool:
    """Whether most values of a flat column repeat (worth a dictionary)."""
    if pa.types.is_nested(column.type) or pa.types.is_null(column.type):
        return False
    try:
        return bool(pc.count_distinct(column).as_py() * 2 <= max(len(column), 2))
    except pa.ArrowNotImplementedError:
        return False
