"""DoPut ingestion: a put's batches streamed into partitioned ZSTD Parquet, then committed.

A put is checked against its dataset before the first batch is read (`Conformer`), each
batch is validated in full and cast before it is written, and `ParquetSink` writes the
rows to disk as they arrive, memory bounded by `buffer_bytes` (parquet_sink.py). At the
end each partition's file is written under a temporary name, fsynced and renamed into
place, directories are fsynced, and the dataset's manifest commits the files as one (see
datasets.py); only then is the put acknowledged. A failed, refused or cancelled put
removes its files, and start-up removes whatever a crash left behind.

`dataset.compact` merges the small files of each partition into one and swaps them in
with one manifest commit, so readers see each partition either before or after.
"""

from __future__ import annotations

import errno
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from flight_server.context import Caller
from flight_server.errors import (
    Cancelled,
    ChronoError,
    InternalError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    one_line,
)
from flight_server.ingest.conform import Conformer
from flight_server.ingest.datasets import (
    DataFile,
    Dataset,
    DatasetRegistry,
    check_dataset_name,
    columns_fingerprint,
)
from flight_server.ingest.parquet_sink import ParquetSink
from flight_server.ingest.write_scope import WriteScope
from flight_server.settings import IngestSettings

logger = logging.getLogger(__name__)

SMALL_FILE_BYTES = 64 * 1024 * 1024  # compaction merges the files under this size
_COMPACT_BATCH_ROWS = 65_536


class CacheBumper(Protocol):
    def bump(self, tables: Iterable[str]) -> None: ...


def _put_marker(metadata: pa.Buffer | None) -> dict[str, Any] | None:
    """A put-protocol message: app_metadata JSON with a "put" key (other metadata is ignored)."""
    if metadata is None or metadata.size > 4096:
        return None
    try:
        value = json.loads(metadata.to_pybytes())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # not JSON a marker could be
        return None
    return value if isinstance(value, dict) and "put" in value else None


def _batches(reader: Any) -> Iterator[pa.RecordBatch]:
    """The record batches of a DoPut stream; a broken or aborted stream raises.

    Plain DoPut clients just end the stream. A client may also mark it: app_metadata
    `{"put": "begin"}` first and `{"put": "commit", "rows": n}` last make the put count
    only when the commit arrives with the right row count, so a writer closed midway
    (a crashed program) stores nothing; `{"put": "abort"}` drops the put.
    """
    begun = committed = False
    rows = 0
    while True:
        try:
            chunk = reader.read_chunk()
        except StopIteration:
            break
        except pa.ArrowInvalid as exc:
            raise InvalidArgument(f"malformed upload: {one_line(str(exc))}") from None
        except (pa.ArrowException, OSError) as exc:
            raise Cancelled(f"the upload stream broke: {one_line(str(exc))}") from None
        marker = _put_marker(chunk.app_metadata)
        if committed and (chunk.data is not None or marker is not None):
            raise InvalidArgument('nothing may follow {"put": "commit"}; nothing was stored')
        if chunk.data is not None:
            rows += chunk.data.num_rows
            yield chunk.data
        if marker is None:
            continue
        if marker["put"] == "abort":
            raise Cancelled("the client aborted the put; nothing was stored")
        begun = begun or marker["put"] == "begin"
        if marker["put"] == "commit":
            if marker.get("rows") != rows:
                raise InvalidArgument(
                    f"the client committed {marker.get('rows')} rows but sent {rows}; nothing was stored"
                )
            committed = True
    if begun and not committed:
        raise Cancelled("the put stream ended without its commit; nothing was stored")


class IngestService:
    """Puts and compactions of datasets (see module docstring)."""

    def __init__(
        self,
        settings: IngestSettings,
        datasets: DatasetRegistry,
        cache: CacheBumper,
        owner: Callable[[str], str | None] = lambda name: None,
    ) -> None:
        self.settings = settings
        self.datasets = datasets
        self._cache = cache
        self._owner = owner

    def resolve(self, raw_name: object) -> Dataset:
        """The dataset a put goes to, created (not yet committed) when new ones are allowed."""
        name = check_dataset_name(raw_name)
        dataset = self.datasets.get(name)
        if dataset is not None:
            return dataset
        if not self.settings.allow_new_datasets:
            raise NotFound(
                f"unknown dataset '{name}'; this server takes puts only into {', '.join(self.datasets.names())} "
                "(FLIGHT_INGEST__ALLOW_NEW_DATASETS is off)"
            )
        if name in self.datasets.reserved:
            raise InvalidArgument(f"dataset name '{name}' is a reserved SQL word; choose another")
        if self.datasets.shadows_system(name):
            raise InvalidArgument(
                f"dataset name '{name}' is the name of a system view or table function of the engines; choose another"
            )
        owner = self._owner(name)
        if owner is not None:
            raise InvalidArgument(f"'{name}' is already a table of engine {owner}; choose another dataset name")
        return self.datasets.get_or_new(name)

    def put(
        self,
        raw_name: object,
        reader: Any,
        cancelled: Callable[[], bool] = lambda: False,
        *,
        caller: Caller,
        replace: bool = False,
    ) -> dict[str, Any]:
        """Stream a DoPut into its dataset; the put result once it is durable and visible.

        `replace` swaps the dataset's files and schema for the put's in one commit
        (datasets without a base table only). What `caller` may write is checked before
        the first batch is read, on every batch, and again at the commit (write_scope.py).
        """
        self.datasets.sweep_retired()
        dataset = self.resolve(raw_name)
        if replace and dataset.base is not None:
            raise InvalidArgument(f"dataset '{dataset.name}' has a base table and cannot be replaced; append instead")
        target = Dataset(dataset.name, dataset.directory) if replace else dataset
        conformer = Conformer(reader.schema, target, self.settings.max_columns, self.settings.max_nesting_depth)
        scope = WriteScope(caller, dataset.name, conformer.schema)
        scope.check_schema(dataset.schema, conformer.added, replace)
        prefix = f"put-{uuid.uuid4().hex[:16]}"
        sink = ParquetSink(dataset.directory, prefix, conformer.schema, self.settings, conformer.partition_of)
        rows = size = 0
        try:
            for batch in _batches(reader):
                rows, size = rows + batch.num_rows, size + batch.nbytes
                if rows > self.settings.max_put_rows:
                    raise ResourceExhausted(
                        f"put has more than {self.settings.max_put_rows:,} rows; nothing was stored, split it"
                    )
                if size > self.settings.max_put_bytes:
                    raise ResourceExhausted(
                        f"put has more than {self.settings.max_put_bytes:,} Arrow bytes; nothing was stored, split it"
                    )
                conformed, codes = conformer.conform(batch)
                scope.check_rows(conformed)
                sink.write(conformed, codes)
            if cancelled():
                raise Cancelled("the client went away before the put finished; nothing was stored")
            files = sink.finish(ensure_file=replace or dataset.schema is None)
            if cancelled():
                raise Cancelled("the client went away before the put finished; nothing was stored")
            if replace:
                self.datasets.replace_all(dataset, conformer.schema, files)
            else:
                self.datasets.commit(dataset, conformer.schema, files, check=scope.check_commit)
        except BaseException as exc:  # noqa: BLE001 - the sink is aborted on any failure, then re-raised
            sink.abort()
            raise _storage_error(exc) from None
        self._cache.bump([dataset.name])
        return {
            "rows": rows,
            "files": [f"{dataset.name}/{f.path}" for f in files],
            "bytes": sum(f.bytes for f in files),
        }

    def compact(self, raw_name: object, partition: object = None) -> dict[str, Any]:
        """Merge the small files of each partition (or of one) into one file per partition.

        `partition` is a hive path ("partition_year=2024/partition_month=5") or an object
        of key values ({"partition_year": 2024, "partition_month": 5}).
        """
        name = check_dataset_name(raw_name)
        dataset = self.datasets.get(name)
        if dataset is None:
            raise NotFound(f"unknown dataset '{name}'; ListFlights shows the datasets")
        if isinstance(partition, dict):
            keys = [key for key, _ in dataset.partitioning.keys] if dataset.partitioning else []
            if sorted(partition) != sorted(keys):
                raise InvalidArgument(f"'partition' of dataset '{name}' needs the keys {', '.join(keys) or '(none)'}")
            partition = "/".join(f"{key}={partition[key]}" for key in keys)
        if partition is not None and not isinstance(partition, str):
            raise InvalidArgument("'partition' must be an object of partition keys or a hive path")
        with dataset.compact_lock:
            self.datasets.sweep_retired()
            with dataset.lock:
                files, schema = list(dataset.files), dataset.schema
            assert schema is not None
            groups: dict[str, list[DataFile]] = {}
            for file in files:
                groups.setdefault(file.partition, []).append(file)
            if partition is not None:
                if partition not in groups:
                    raise NotFound(f"dataset '{name}' has no files in partition '{partition[:120]}'")
                groups = {partition: groups[partition]}
            fingerprint = columns_fingerprint(schema.names)
            chosen = {}
            for key, group in groups.items():
                small = [f for f in group if f.bytes < SMALL_FILE_BYTES or f.columns != fingerprint]
                if len(small) > 1 or (small and small[0].columns != fingerprint):
                    chosen[key] = small
            old = [f for group in chosen.values() for f in group]
            new: list[DataFile] = []
            if old:
                new = self._merge(dataset, schema, chosen)
        self.datasets.sweep_retired()
        return {
            "dataset": name,
            "partitions": len(chosen),
            "files_before": len(old),
            "files_after": len(new),
            "rows": sum(f.rows for f in new),
            "bytes_before": sum(f.bytes for f in old),
            "bytes_after": sum(f.bytes for f in new),
        }

    def _merge(self, dataset: Dataset, schema: pa.Schema, chosen: dict[str, list[DataFile]]) -> list[DataFile]:
        sink = ParquetSink(dataset.directory, f"compact-{uuid.uuid4().hex[:16]}", schema, self.settings)
        try:
            for partition, group in chosen.items():
                for file in group:
                    parquet = pq.ParquetFile(dataset.directory / file.path)
                    for batch in parquet.iter_batches(batch_size=_COMPACT_BATCH_ROWS):
                        sink.write(_with_schema(batch, schema), partition=partition)
            new = sink.finish()
            self.datasets.replace(dataset, [f for group in chosen.values() for f in group], new)
        except BaseException as exc:  # noqa: BLE001 - the sink is aborted on any failure, then re-raised
            sink.abort()
            raise _storage_error(exc) from None
        return new


def _with_schema(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A batch of an older file in the current schema: columns added since are null."""
    names = batch.schema.names
    arrays = [
        batch.column(names.index(f.name)) if f.name in names else pa.nulls(batch.num_rows, f.type) for f in schema
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _storage_error(exc: BaseException) -> BaseException:
    if isinstance(exc, ChronoError) or not isinstance(exc, OSError):
        return exc
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted("the server's disk is full; nothing was stored")
    logger.error("dataset storage failed", exc_info=exc)
    return InternalError("the server could not store the data; nothing was stored")
