"""Consistency checks of a replica against PostgreSQL, by key range, with repair.

Both sides are summed in DuckDB over the same Arrow types: PostgreSQL's rows as read
in the sync's snapshot, and the replica table right after the sync applied that same
snapshot. Integer keys split into contiguous ranges; text keys into hash buckets.
A range whose row count or checksum differs is re-copied from PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from flight_server.sync.replica import SCHEMA, ReplicaStore
from flight_server.sync.source import TableShape


@dataclass
class TableCheck:
    table: str
    source_rows: int
    replica_rows: int
    ranges: int
    mismatched: list[str] = field(default_factory=list)
    repaired: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "source_rows": self.source_rows,
            "replica_rows": self.replica_rows,
            "ranges": self.ranges,
            "mismatched_ranges": self.mismatched,
            "consistent": not self.mismatched,
            "repaired": self.repaired,
        }


def _bucket_sql(shape: TableShape, source: pa.Table, buckets: int) -> tuple[str, dict[int, str]]:
    """A SQL expression giving each row's key range, and each range described."""
    if shape.key_type == "text" or source.num_rows == 0:
        return f"hash(id) % {buckets}", {b: f"hash bucket {b} of {buckets}" for b in range(buckets)}
    ids = source.column("id")
    low, high = int(pa.compute.min(ids).as_py()), int(pa.compute.max(ids).as_py())
    width = max(1, -(-(high - low + 1) // buckets))
    names = {b: f"id {low + b * width}..{low + (b + 1) * width - 1}" for b in range(buckets)}
    return f"CASE WHEN id < {low} THEN -1 WHEN id > {high} THEN {buckets} ELSE (id - {low}) // {width} END", {
        **names,
        -1: f"id < {low}",
        buckets: f"id > {high}",
    }


Sums = dict[int, tuple[int, int]]  # key range -> (rows, checksum)


def _sums(store: ReplicaStore, relation: str, expr: str, columns: list[str], source: pa.Table) -> Sums:
    hashed = ", ".join(f'"{c}"' for c in columns)
    rows = store.query(
        f"SELECT {expr} AS b, count(*), sum(hash({hashed})::HUGEINT) FROM {relation} GROUP BY b",
        {"_source": source},
    )
    return {int(b): (int(n), int(s)) for b, n, s in rows}


def check_table(store: ReplicaStore, shape: TableShape, source: pa.Table, buckets: int, repair: bool) -> TableCheck:
    """Compare one replica table with PostgreSQL's rows; re-copy the ranges that differ."""
    columns = [name for name, _ in shape.columns]
    expr, names = _bucket_sql(shape, source, buckets)
    theirs = _sums(store, "_source", expr, columns, source)
    ours = _sums(store, f'{SCHEMA}."{shape.name}"', expr, columns, source)
    bad = sorted(b for b in set(theirs) | set(ours) if theirs.get(b) != ours.get(b))
    check = TableCheck(
        shape.name,
        source.num_rows,
        sum(n for n, _ in ours.values()),
        len(theirs),
        [names.get(b, str(b)) for b in bad],
    )
    if bad and repair:
        where = f"({expr}) IN ({', '.join(str(b) for b in bad)})"
        store.repair(shape.name, where, source)
        check.repaired = True
    return check
