"""The type policy of Flight SQL results: Arrow types every common client can read.

Flight SQL clients are many (ADBC in Go and C, the JDBC and ODBC drivers, BI tools),
and several of them fail on Arrow types that are newer or rarer than the rest. Our
engines produce some of those (DuckDB and Polars-made data can carry string views;
ingested Parquet may bring large types; DuckDB's HUGEINT-sized decimals are
decimal256). What a Flight SQL result carries instead (the README has the table and the reasons):

- `string_view`, `large_string` -> `string`; `binary_view`, `large_binary` -> `binary`;
  list views and large lists -> `list`: JDBC, ODBC and Arrow < 15 cannot read views,
  and some ODBC builds refuse 64-bit offsets;
- `decimal256` -> `decimal128` when the precision fits (<= 38), else `string`: most
  drivers map only 128-bit decimals to SQL DECIMAL, and text keeps every digit;
- timestamps with a time zone -> the same instants in `UTC`: zone names need a zone
  database several drivers lack;
- dictionaries -> their values, decoded.

Anything else goes as it is. A batch whose 32-bit offsets would overflow after the
cast is an error rather than silently wrong data (results that large stream in
several batches, each well under that).
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.types as pt

from flight_server.executor import OpenResult


def client_type(t: pa.DataType) -> pa.DataType:
    """The type a Flight SQL result carries for a column of type `t`."""
    if pt.is_dictionary(t):
        return client_type(t.value_type)
    if pt.is_string_view(t) or pt.is_large_string(t):
        return pa.string()
    if pt.is_binary_view(t) or pt.is_large_binary(t):
        return pa.binary()
    if pt.is_large_list(t) or pt.is_list_view(t) or pt.is_large_list_view(t) or pt.is_list(t):
        return pa.list_(_field(t.value_field))
    if pt.is_fixed_size_list(t):
        return pa.list_(_field(t.value_field), t.list_size)
    if pt.is_struct(t):
        return pa.struct([_field(t.field(i)) for i in range(t.num_fields)])
    if pt.is_map(t):
        return pa.map_(client_type(t.key_type), _field(t.item_field), t.keys_sorted)
    if pt.is_decimal256(t):
        return pa.decimal128(t.precision, t.scale) if t.precision <= 38 else pa.string()
    if pt.is_timestamp(t) and t.tz is not None and t.tz != "UTC":
        return pa.timestamp(t.unit, tz="UTC")
    return t


def _field(f: pa.Field) -> pa.Field:
    return f.with_type(client_type(f.type))


def client_schema(schema: pa.Schema) -> pa.Schema:
    """The schema a Flight SQL result carries (field names, nullability and metadata kept)."""
    return pa.schema([_field(f) for f in schema], metadata=schema.metadata)


def conform_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """`batch` in the client schema `schema` (from `client_schema`)."""
    if batch.schema.equals(schema):
        return batch
    arrays = []
    for column, target in zip(batch.columns, schema, strict=True):
        if pt.is_dictionary(column.type):
            column = column.dictionary_decode()
        arrays.append(column if column.type == target.type else column.cast(target.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def conform_reader(reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
    """A reader that streams `reader`'s batches in the client schema (or `reader` itself)."""
    schema = client_schema(reader.schema)
    if schema.equals(reader.schema):
        return reader

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            yield conform_batch(batch, schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def conform_result(result: OpenResult) -> OpenResult:
    """An opened result with the type policy applied to its schema, batches and reader."""
    schema = client_schema(result.schema)
    if schema.equals(result.schema):
        return result
    result.schema = schema
    result.batches = [conform_batch(b, schema) for b in result.batches]
    if result.running is not None:
        result.running.reader = conform_reader(result.running.reader)
    return result
