"""What a put may send, and how its batches become rows of the dataset.

Only plain Arrow types from an allow-list, nested at most `max_nesting_depth` deep, and
never an extension type (whatever its name: nothing a client sends is ever unpickled or
handed to Python code). Against a dataset the put's columns must match by name (case
does not matter, as in SQL) with types equal or safely widened; values are cast with
pyarrow's safe casts, so a lossy value fails the put instead of being changed. Missing
optional columns of a known dataset become nulls (or the table's default); columns the
dataset lacks are added as nullable columns (schema evolution). Partition keys are
always derived by the server from the partition source column.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from flight_server.errors import InvalidArgument, one_line
from flight_server.ingest.datasets import Dataset, Partitioning

_EXTENSION_KEY = b"ARROW:extension:name"
_MAX_NAME = 255
_DAY_US = 86_400_000_000
_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": _DAY_US, "ns": 86_400_000_000_000}
_FIRST_DAY, _LAST_DAY = -719_162, 2_932_896  # 0001-01-01 and 9999-12-31, in days since 1970
_EPOCH = dt.date(1970, 1, 1)

_PRIMITIVE: tuple[Callable[[pa.DataType], bool], ...] = (
    pa.types.is_null,
    pa.types.is_boolean,
    pa.types.is_integer,
    lambda t: pa.types.is_float32(t) or pa.types.is_float64(t),
    pa.types.is_decimal128,
    lambda t: pa.types.is_decimal256(t) and t.precision <= 38,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_string_view,
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_binary_view,
    pa.types.is_fixed_size_binary,
    pa.types.is_date32,
    pa.types.is_date64,
    pa.types.is_time32,
    pa.types.is_time64,
    pa.types.is_timestamp,
)
_LISTS = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)


def _strings(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _binaries(t: pa.DataType) -> bool:
    return any(
        check(t) for check in (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view)
    ) or pa.types.is_fixed_size_binary(t)


def check_field(f: pa.Field, max_depth: int, depth: int = 0, where: str = "") -> None:
    """Refuse a field whose type is not allow-listed or nests deeper than `max_depth`."""
    name = where or f.name
    t = f.type
    if isinstance(t, pa.BaseExtensionType) or (f.metadata and _EXTENSION_KEY in f.metadata):
        ext = t.extension_name if isinstance(t, pa.BaseExtensionType) else f.metadata[_EXTENSION_KEY].decode()
        raise InvalidArgument(
            f"column '{name}' has extension type '{ext[:60]}'; send plain Arrow types (its storage type)"
        )
    if depth > max_depth:
        raise InvalidArgument(f"column '{name}' nests deeper than {max_depth} levels of lists and structs")
    if pa.types.is_dictionary(t):
        check_field(pa.field(f.name, t.value_type), max_depth, depth, name)
    elif any(is_list(t) for is_list in _LISTS):
        check_field(t.value_field, max_depth, depth + 1, f"{name}[]")
    elif pa.types.is_struct(t):
        for child in (t.field(i) for i in range(t.num_fields)):
            check_field(child, max_depth, depth + 1, f"{name}.{child.name}")
    elif pa.types.is_map(t):
        check_field(t.key_field, max_depth, depth + 1, f"{name}.key")
        check_field(t.item_field, max_depth, depth + 1, f"{name}.value")
    elif not any(allowed(t) for allowed in _PRIMITIVE):
        raise InvalidArgument(f"column '{name}' has type {t}, which datasets do not store")


def leaf_columns(t: pa.DataType) -> int:
    """How many Parquet leaf columns a column of type `t` is stored as (at least one)."""
    if pa.types.is_dictionary(t):
        return leaf_columns(t.value_type)
    if any(is_list(t) for is_list in _LISTS):
        return leaf_columns(t.value_type)
    if pa.types.is_struct(t):
        return max(1, sum(leaf_columns(t.field(i).type) for i in range(t.num_fields)))
    if pa.types.is_map(t):
        return leaf_columns(t.key_type) + leaf_columns(t.item_type)
    return 1


def normalize(t: pa.DataType) -> pa.DataType:
    """The type a column is stored as: dictionaries decoded, view types made plain."""
    if pa.types.is_dictionary(t):
        return normalize(t.value_type)
    if pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_list(t):
        return pa.list_(normalize(t.value_type))
    if pa.types.is_large_list(t):
        return pa.large_list(normalize(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(c.name, normalize(c.type)) for c in (t.field(i) for i in range(t.num_fields))])
    return t


def widens(src: pa.DataType, dst: pa.DataType) -> bool:
    """True when every `src` value has a `dst` value (or the safe cast checks it)."""
    if src == dst or pa.types.is_null(src):
        return True
    if pa.types.is_dictionary(src):
        return widens(src.value_type, dst)
    if pa.types.is_integer(src) and pa.types.is_integer(dst):
        if pa.types.is_signed_integer(src) == pa.types.is_signed_integer(dst):
            return bool(src.bit_width <= dst.bit_width)
        return bool(pa.types.is_unsigned_integer(src) and src.bit_width < dst.bit_width)
    if pa.types.is_floating(dst):
        if pa.types.is_floating(src):
            return bool(src.bit_width <= dst.bit_width)
        return bool(pa.types.is_integer(src))  # exact values only: the safe cast refuses the rest
    if _strings(src) and _strings(dst):
        return True
    if _binaries(src) and _binaries(dst) and not pa.types.is_fixed_size_binary(dst):
        return True
    temporal = (pa.types.is_timestamp, pa.types.is_date, pa.types.is_time)
    if any(kind(src) and kind(dst) for kind in temporal):
        return True  # unit changes are checked value by value; time zones convert via UTC
    if pa.types.is_decimal(src) and pa.types.is_decimal(dst):
        return bool(dst.scale >= src.scale and dst.precision - dst.scale >= src.precision - src.scale)
    return _widens_nested(src, dst)


def _widens_nested(src: pa.DataType, dst: pa.DataType) -> bool:
    """`widens` for lists, structs (same field names, in order) and maps; False for any other pair."""
    src_list = any(is_list(src) for is_list in _LISTS)
    if src_list and (pa.types.is_list(dst) or pa.types.is_large_list(dst)):
        return widens(src.value_type, dst.value_type)
    if pa.types.is_struct(src) and pa.types.is_struct(dst):
        names = [src.field(i).name for i in range(src.num_fields)]
        if names != [dst.field(i).name for i in range(dst.num_fields)]:
            return False
        return all(widens(src.field(i).type, dst.field(i).type) for i in range(src.num_fields))
    if pa.types.is_map(src) and pa.types.is_map(dst):
        return widens(src.key_type, dst.key_type) and widens(src.item_type, dst.item_type)
    return False


@dataclass(frozen=True)
class _Column:
    name: str
    source: int | None  # index in the put's schema; None: filled by the server
    type: pa.DataType
    required: bool
    default: pa.Scalar | None = None


class Conformer:
    """Turns the batches of one put into batches of the dataset's file schema."""

    def __init__(self, source: pa.Schema, dataset: Dataset, max_columns: int, max_depth: int) -> None:
        _check_names(source, max_depth)
        index = {f.name.lower(): i for i, f in enumerate(source)}
        part = dataset.partitioning
        derived = {key for key, _ in part.keys} - {part.source} if part else set()
        columns = _dataset_columns(source, dataset, index)
        self.source_index: int | None = None
        if part is not None and part.source not in (dataset.schema.names if dataset.schema else []):
            self.source_index = index.pop(part.source, None)  # a key column: kept for the key only
            if self.source_index is None:
                raise InvalidArgument(f"required column '{part.source}' is missing")
            if not widens(source.field(self.source_index).type, pa.date32()):
                raise InvalidArgument(f"column '{part.source}' is {source.field(self.source_index).type}; send date32")
        self.added: list[str] = []  # columns the dataset lacks (all of a new dataset's)
        for name, i in sorted(index.items(), key=lambda item: item[1]):
            if name not in derived:  # the server derives partition keys; sent ones are ignored
                columns.append(_Column(source.field(i).name, i, normalize(source.field(i).type), False))
                self.added.append(source.field(i).name)
        # what a column costs is its leaves (Parquet columns): a struct counts its fields
        width = sum(leaf_columns(c.type) for c in columns) + (len(part.keys) if part else 0)
        if width > max_columns:
            raise InvalidArgument(f"dataset '{dataset.name}' would have {width} columns; the limit is {max_columns}")
        self._columns = columns
        self.partitioning = part
        self.schema = pa.schema([pa.field(c.name, c.type) for c in columns])

    def conform(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray | None]:
        """The batch in file schema, validated, and each row's partition code (or None)."""
        try:
            batch.validate(full=True)
        except pa.ArrowException as exc:
            raise InvalidArgument(f"malformed batch: {one_line(str(exc))}") from None
        arrays = []
        for column in self._columns:
            arrays.append(self._column(batch, column))
        out = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        if self.partitioning is None:
            return out, None
        part = self.partitioning
        if self.source_index is not None:
            key_column = _Column(part.source, self.source_index, pa.date32(), True)
            source = self._column(batch, key_column)
        else:
            source = out.column(self.schema.get_field_index(part.source))
        return out, partition_codes(part, source)

    def _column(self, batch: pa.RecordBatch, column: _Column) -> pa.Array:
        if column.source is None:
            if column.default is not None:
                return pa.repeat(column.default, batch.num_rows)
            return pa.nulls(batch.num_rows, column.type)
        array = batch.column(column.source)
        if array.type != column.type:
            try:
                array = array.cast(column.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InvalidArgument(f"column '{column.name}': {one_line(str(exc))}") from None
        if column.required and array.null_count:
            raise InvalidArgument(f"column '{column.name}' is required but has {array.null_count} nulls")
        return array

    def partition_of(self, code: int) -> str:
        """The hive path of the partition a code of `conform` names."""
        assert self.partitioning is not None
        return partition_path(self.partitioning, code)


def partition_codes(part: Partitioning, source: pa.Array) -> np.ndarray:
    """One integer per row naming its partition: months or days since 1970."""
    if len(part.keys) == 2:  # year and month of epoch seconds
        seconds = source.to_numpy(zero_copy_only=False).astype(np.int64)
        if len(seconds) and (seconds.min() < 0 or seconds.max() > 253_402_300_799):
            raise InvalidArgument(f"column '{part.source}' must hold seconds between 1970 and 9999")
        months: np.ndarray = seconds.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)
        return months
    if pa.types.is_timestamp(source.type):
        values = source.cast(pa.int64()).to_numpy(zero_copy_only=False)
        days = np.floor_divide(values, _PER_DAY[source.type.unit])
    else:
        days = source.cast(pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)
    if len(days) and (days.min() < _FIRST_DAY or days.max() > _LAST_DAY):
        raise InvalidArgument(f"column '{part.source}' must hold dates between years 1 and 9999")
    codes: np.ndarray = days.astype(np.int64)
    return codes


def partition_path(part: Partitioning, code: int) -> str:
    if len(part.keys) == 2:
        (year_key, _), (month_key, _) = part.keys
        return f"{year_key}={1970 + code // 12}/{month_key}={code % 12 + 1}"
    return f"{part.keys[0][0]}={(_EPOCH + dt.timedelta(days=code)).isoformat()}"


def _check_names(source: pa.Schema, max_depth: int) -> None:
    """INVALID_ARGUMENT for a bad column name, two names differing only in case, or a field too deep."""
    seen: dict[str, str] = {}
    for f in source:
        if not f.name or "\x00" in f.name or len(f.name) > _MAX_NAME:
            raise InvalidArgument(f"column name '{f.name[:40]!r}' must be 1 to 255 characters without NUL")
        if f.name.lower() in seen:
            raise InvalidArgument(f"columns '{seen[f.name.lower()]}' and '{f.name}' differ only in case")
        seen[f.name.lower()] = f.name
        check_field(f, max_depth)


def _dataset_columns(source: pa.Schema, dataset: Dataset, index: dict[str, int]) -> list[_Column]:
    """The dataset's own columns, each matched to the put's column; pops the matched names from `index`."""
    base = dataset.base
    columns: list[_Column] = []
    for target in dataset.schema or []:
        i = index.pop(target.name.lower(), None)
        required = base.required if base else set()
        if i is None and base is None:
            raise InvalidArgument(
                f"column '{target.name}' is missing; dataset '{dataset.name}' has the columns "
                f"{', '.join(dataset.schema.names) if dataset.schema else ''} (fixed by its first put)"
            )
        if i is None and target.name in required:
            raise InvalidArgument(f"required column '{target.name}' is missing")
        if i is not None and not widens(source.field(i).type, target.type):
            raise InvalidArgument(
                f"column '{target.name}' is {source.field(i).type}; dataset '{dataset.name}' "
                f"stores {target.type}: send that type or one that widens to it"
            )
        default = base.defaults.get(target.name) if base else None
        columns.append(_Column(target.name, i, target.type, target.name in required, default))
    return columns
