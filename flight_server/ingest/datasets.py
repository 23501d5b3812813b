"""Ingested datasets: their Parquet files, the manifest that commits them, their views.

Layout: `data_dir/datasets/<name>/[<key>=<value>/...]<put>-<n>.parquet` plus
`_manifest.json`, the list of committed files and the dataset's Arrow schema. The
manifest is the commit point: a file belongs to a dataset exactly when the manifest lists
it. It is replaced atomically (temporary name, fsync, rename, directory fsync), so a put
or a compaction becomes visible as a whole or not at all, also across a crash. Views name
the committed files one by one, so no reader sees a file before its commit. At start-up
everything the manifests do not list (temporary files, files of puts that never
committed, files a compaction replaced) is removed and the views are rebuilt.

The three analytics tables live in the DuckDB schema `base`; `main.<name>` is a view over
the base table UNION ALL BY NAME the dataset's Parquet files (hive-partitioned).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from flight_server.context import RunningQueries
from flight_server.engines.duckdb_schema import BASE_SCHEMA
from flight_server.errors import InternalError, InvalidArgument

logger = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
TEMP_PREFIX = ".tmp-"
VIEW_COMMENT = "chrono-flight dataset"
DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# prefixes of the engines' catalog names (every relation of PostgreSQL's pg_catalog is pg_...)
SYSTEM_PREFIXES = ("pg_", "sqlite_", "duckdb_")
# names a bare `FROM name` resolves to in DuckDB's system catalog, and its table functions:
# a dataset view main.<name> would shadow the former and confuse tools over the latter
_SYSTEM_NAMES_SQL = (
    "SELECT view_name FROM duckdb_views() WHERE internal AND schema_name IN ('main', 'pg_catalog') "
    "UNION SELECT function_name FROM duckdb_functions() WHERE function_type IN ('table', 'table_macro')"
)
RETIRE_GRACE_S = 5.0  # replaced files outlive the last query that may still read them by this much


@dataclass(frozen=True)
class Partitioning:
    """Hive partitioning of a known dataset: keys derived by the server from `source`."""

    source: str
    keys: tuple[tuple[str, str], ...]  # (name, DuckDB type)
    base_exprs: tuple[tuple[str, str], ...] = ()  # keys the base table lacks: (name, SQL)


# one per base table of schemas/duckdb.sql (engines.duckdb_schema.BASE_TABLES)
KNOWN_DATASETS: dict[str, Partitioning] = {
    "cdx_records": Partitioning("unix_timestamp", (("partition_year", "INTEGER"), ("partition_month", "INTEGER"))),
    "content_analytics": Partitioning("date_captured", (("date_captured", "DATE"),)),
    "performance_metrics": Partitioning(
        "timestamp", (("partition_day", "DATE"),), (("partition_day", 'CAST("timestamp" AS DATE)'),)
    ),
}


@dataclass(frozen=True)
class DataFile:
    path: str  # relative to the dataset directory, '/'-separated
    rows: int
    bytes: int
    partition: str  # hive path of its partition, '' when unpartitioned
    columns: str  # fingerprint of its column names


@dataclass(frozen=True)
class BaseTable:
    """What the DuckDB base table of a known dataset says about ingestion."""

    schema: pa.Schema  # columns stored in files: the table's, without partition keys
    required: frozenset[str]
    defaults: dict[str, pa.Scalar]


@dataclass
class Dataset:
    name: str
    directory: Path
    base: BaseTable | None = None
    partitioning: Partitioning | None = None
    schema: pa.Schema | None = None  # file schema; None until a new dataset's first commit
    files: list[DataFile] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    compact_lock: threading.Lock = field(default_factory=threading.Lock)


def columns_fingerprint(names: Iterable[str]) -> str:
    return hashlib.sha1("\x00".join(names).encode(), usedforsecurity=False).hexdigest()[:12]


def check_dataset_name(raw: object) -> str:
    name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if not DATASET_NAME.fullmatch(name):
        shown = name[:40].encode("unicode_escape").decode()
        raise InvalidArgument(
            f"invalid dataset name '{shown}': use 1 to 63 characters a-z, 0-9 and _, starting with a letter"
        )
    return name


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class DatasetRegistry:
    """Every dataset's committed state; commits, views, start-up recovery and clean-up."""

    def __init__(
        self,
        root: Path,
        connect: Callable[[], duckdb.DuckDBPyConnection],
        running: RunningQueries | None = None,
    ) -> None:
        self.root = root.resolve()
        self._connect = connect
        self._running = running
        self._lock = threading.Lock()
        self._datasets: dict[str, Dataset] = {}
        self._retired: list[tuple[float, list[Path]]] = []
        reserved = self._sql("SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category = 'reserved'")
        self.reserved = frozenset(str(word).lower() for word in reserved)
        self.system_names = frozenset(str(name).lower() for name in self._sql(_SYSTEM_NAMES_SQL))

    def shadows_system(self, name: str) -> bool:
        """Whether a dataset `name` is (or may become) a system view or table function of an engine."""
        return name in self.system_names or name.startswith(SYSTEM_PREFIXES) or name == "information_schema"

    def _sql(self, sql: str) -> list[Any]:
        cursor = self._connect()
        try:
            return [row[0] for row in cursor.sql(sql).fetchall()]
        finally:
            cursor.close()

    # -- start-up ----------------------------------------------------------------------

    def open(self) -> None:
        """Load manifests, remove every uncommitted file, (re)create every dataset view."""
        self.root.mkdir(parents=True, exist_ok=True)
        if "=" in str(self.root):
            logger.warning("the datasets path contains '='; hive partitioning may see extra keys")
        for name, partitioning in KNOWN_DATASETS.items():
            dataset = Dataset(name, self.root / name, self._base_table(name, partitioning), partitioning)
            dataset.schema = dataset.base.schema if dataset.base else None
            self._load(dataset)
        for directory in sorted(self.root.iterdir()):
            name = directory.name
            if name in KNOWN_DATASETS or not directory.is_dir():
                continue
            if not DATASET_NAME.fullmatch(name) or self.shadows_system(name):
                logger.warning("ignoring a directory that is no dataset", extra={"fields": {"name": name}})
                continue
            if not (directory / MANIFEST).exists():
                shutil.rmtree(directory)  # its first put never committed
                continue
            self._load(Dataset(name, directory))
        live = set(self._datasets)
        for name in self._sql(f"SELECT view_name FROM duckdb_views() WHERE comment = {_sql_text(VIEW_COMMENT)}"):
            if name not in live:
                self._execute(f'DROP VIEW IF EXISTS main."{name}"')
        for dataset in self._datasets.values():
            self._create_view(dataset)

    def _base_table(self, name: str, partitioning: Partitioning) -> BaseTable:
        cursor = self._connect()
        try:
            table = cursor.sql(f'SELECT * FROM {BASE_SCHEMA}."{name}" LIMIT 0').to_arrow_table()
            columns = cursor.sql(
                "SELECT column_name, is_nullable, column_default, data_type FROM duckdb_columns() "
                "WHERE schema_name = $1 AND table_name = $2",
                params=[BASE_SCHEMA, name],
            ).fetchall()
            keys = {key for key, _ in partitioning.keys}
            schema = pa.schema([pa.field(f.name, f.type) for f in table.schema if f.name not in keys])
            required = {col for col, nullable, _, _ in columns if not nullable and col not in keys}
            defaults = {}
            for col, _, default, kind in columns:
                if default is not None and col in schema.names:
                    value = cursor.sql(f"SELECT CAST(({default}) AS {kind})").to_arrow_table().column(0)[0]
                    defaults[col] = value.cast(schema.field(col).type)
        finally:
            cursor.close()
        return BaseTable(schema, frozenset(required | {partitioning.source}), defaults)

    def _load(self, dataset: Dataset) -> None:
        manifest = dataset.directory / MANIFEST
        if manifest.exists():
            data = json.loads(manifest.read_text())
            stored = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(data["schema"])))
            base = dataset.schema
            extra = [f for f in stored if base is None or f.name not in base.names]
            dataset.schema = pa.schema([*(base or []), *extra])
            dataset.files = [DataFile(**entry) for entry in data["files"]]
        committed = {f.path for f in dataset.files}
        missing = [f for f in dataset.files if not (dataset.directory / f.path).is_file()]
        if missing:
            logger.error(
                "committed files are missing; serving the rest",
                extra={"fields": {"dataset": dataset.name, "missing": [f.path for f in missing]}},
            )
            dataset.files = [f for f in dataset.files if f not in missing]
        if dataset.directory.exists():
            self._remove_uncommitted(dataset.directory, committed)
        self._datasets[dataset.name] = dataset

    @staticmethod
    def _remove_uncommitted(directory: Path, committed: set[str]) -> None:
        for current, _dirs, files in os.walk(directory, topdown=False):
            here = Path(current)
            for name in files:
                rel = (here / name).relative_to(directory).as_posix()
                if rel != MANIFEST and rel not in committed:
                    (here / name).unlink()
            if here != directory and not any(here.iterdir()):
                here.rmdir()

    # -- reading -----------------------------------------------------------------------

    def get(self, name: str) -> Dataset | None:
        with self._lock:
            dataset = self._datasets.get(name)
        return dataset if dataset is not None and dataset.schema is not None else None

    def get_or_new(self, name: str) -> Dataset:
        with self._lock:
            if name not in self._datasets:
                self._datasets[name] = Dataset(name, self.root / name)
            return self._datasets[name]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(n for n, d in self._datasets.items() if d.schema is not None)

    def row_counts(self) -> dict[str, int]:
        """Rows in the committed Parquet files of each dataset."""
        with self._lock:
            datasets = list(self._datasets.values())
        return {d.name: sum(f.rows for f in d.files) for d in datasets if d.files}

    # -- commits -----------------------------------------------------------------------

    def commit(
        self,
        dataset: Dataset,
        schema: pa.Schema,
        files: list[DataFile],
        check: Callable[[pa.Schema | None, pa.Schema], None] | None = None,
    ) -> None:
        """Make a put's files part of the dataset, atomically, under the new schema.

        `check(current, merged)` runs under the dataset's lock before anything is
        published; if it raises, the dataset stays as it was.
        """
        with dataset.lock:
            merged = merge_schema(dataset.schema, schema)
            if check is not None:
                check(dataset.schema, merged)
            self._publish(dataset, merged, [*dataset.files, *files])

    def replace(self, dataset: Dataset, old: list[DataFile], new: list[DataFile]) -> None:
        """Swap `old` files for `new` ones (a compaction), atomically for readers."""
        with dataset.lock:
            gone = {f.path for f in old}
            if not gone <= {f.path for f in dataset.files}:
                raise InternalError("the files to compact changed while compacting; run it again")
            assert dataset.schema is not None
            kept = [f for f in dataset.files if f.path not in gone]
            self._publish(dataset, dataset.schema, [*kept, *new])
        with self._lock:
            self._retired.append((time.monotonic(), [dataset.directory / f.path for f in old]))

    def replace_all(self, dataset: Dataset, schema: pa.Schema, files: list[DataFile]) -> None:
        """Make `files` the dataset's only files, under `schema`, atomically; the old files retire."""
        with dataset.lock:
            old = list(dataset.files)
            self._publish(dataset, schema, files)
        with self._lock:
            self._retired.append((time.monotonic(), [dataset.directory / f.path for f in old]))

    def _publish(self, dataset: Dataset, schema: pa.Schema, files: list[DataFile]) -> None:
        """Commit a new file list: the manifest first (the durable commit), then the view.

        If either fails, the previous manifest and view stay (or come back): the caller
        removes its files and reports the failure, so nothing half-done is ever visible.
        """
        previous = (dataset.schema, dataset.files)
        had_manifest = (dataset.directory / MANIFEST).exists()
        dataset.directory.mkdir(parents=True, exist_ok=True)
        dataset.schema, dataset.files = schema, files
        try:
            self._write_manifest(dataset)
            self._create_view(dataset)
        except BaseException:
            dataset.schema, dataset.files = previous
            with contextlib.suppress(Exception):
                if had_manifest:
                    self._write_manifest(dataset)
                else:
                    (dataset.directory / MANIFEST).unlink(missing_ok=True)
            raise

    def _manifest_bytes(self, dataset: Dataset) -> bytes:
        assert dataset.schema is not None
        body = {
            "format": 1,
            "dataset": dataset.name,
            "schema": base64.b64encode(dataset.schema.serialize().to_pybytes()).decode(),
            "files": [vars(f) for f in dataset.files],  # flat dataclasses: vars() is asdict() but fast
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def _write_manifest(self, dataset: Dataset) -> None:
        target = dataset.directory / MANIFEST
        temp = dataset.directory / f"{TEMP_PREFIX}{MANIFEST}"
        with open(temp, "wb") as out:
            out.write(self._manifest_bytes(dataset))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
        fsync_path(dataset.directory)
        fsync_path(self.root)

    # -- views -------------------------------------------------------------------------

    def view_sql(self, dataset: Dataset) -> str:
        """The base table (if any) UNION ALL BY NAME the committed files, listed one by one."""
        parts = []
        if dataset.base is not None:
            exprs = dataset.partitioning.base_exprs if dataset.partitioning else ()
            derived = "".join(f", {sql} AS {key}" for key, sql in exprs)
            parts.append(f'SELECT *{derived} FROM {BASE_SCHEMA}."{dataset.name}"')
        if dataset.files:
            folder = str(dataset.directory)
            paths = ", ".join(_sql_text(f"{folder}/{f.path}") for f in dataset.files)
            assert dataset.schema is not None
            uniform = {f.columns for f in dataset.files} == {columns_fingerprint(dataset.schema.names)}
            options = f"union_by_name = {str(not uniform).lower()}"
            if dataset.partitioning is not None:
                types = ", ".join(f"'{key}': {kind}" for key, kind in dataset.partitioning.keys)
                options += f", hive_partitioning = true, hive_types = {{{types}}}"
            else:
                options += ", hive_partitioning = false"
            parts.append(f"SELECT * FROM read_parquet([{paths}], {options})")
        return f'CREATE OR REPLACE VIEW main."{dataset.name}" AS ' + " UNION ALL BY NAME ".join(parts)

    def _create_view(self, dataset: Dataset) -> None:
        if dataset.base is None and not dataset.files:  # nothing to read (its files went missing)
            self._execute(f'DROP VIEW IF EXISTS main."{dataset.name}"')
            return
        cursor = self._connect()
        try:
            cursor.execute("BEGIN TRANSACTION")
            cursor.execute(self.view_sql(dataset))
            cursor.execute(f'COMMENT ON VIEW main."{dataset.name}" IS {_sql_text(VIEW_COMMENT)}')
            cursor.execute("COMMIT")
        finally:
            cursor.close()

    def _execute(self, sql: str) -> None:
        cursor = self._connect()
        try:
            cursor.execute(sql)
        finally:
            cursor.close()

    # -- clean-up ----------------------------------------------------------------------

    def sweep_retired(self) -> int:
        """Delete replaced files that no running query can still be reading."""
        now = time.monotonic()
        ages = [q["running_s"] for q in self._running.snapshot()] if self._running is not None else []
        oldest = now - max(ages) - 0.01 if ages else None  # when the longest-running query began
        removed = 0
        with self._lock:
            keep = []
            for retired_at, paths in self._retired:
                if now - retired_at < RETIRE_GRACE_S or (oldest is not None and oldest <= retired_at):
                    keep.append((retired_at, paths))
                    continue
                for path in paths:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed += 1
            self._retired = keep
        return removed


def merge_schema(current: pa.Schema | None, incoming: pa.Schema) -> pa.Schema:
    """The dataset schema after a put with `incoming` columns: new columns are appended."""
    if current is None:
        return incoming
    by_name = {f.name.lower(): f for f in current}
    extra = []
    for f in incoming:
        known = by_name.get(f.name.lower())
        if known is None:
            extra.append(f)
        elif known.type != f.type or known.name != f.name:
            raise InvalidArgument(
                f"column '{f.name}' changed to {known.name} {known.type} while this put ran; send it again"
            )
    return pa.schema([*current, *extra]) if extra else current
