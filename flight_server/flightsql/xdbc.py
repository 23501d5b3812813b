"""The SQL types the server serves, as Flight SQL `GetXdbcTypeInfo` rows, and Arrow type names.

Each row describes one DuckDB type name (the dialect clients write) with the JDBC/ODBC
codes of the Flight SQL `XdbcDataType` enum: date, time and timestamp types carry the
generic `XDBC_DATETIME` (9) as `sql_data_type` with a subcode, intervals `XDBC_INTERVAL`.
`arrow_type_name` names the SQL type of an Arrow type, for columns that have no engine
type of their own (the named queries shown as views).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

# XdbcDataType codes (FlightSql.proto)
XDBC_NUMERIC = 2
XDBC_DECIMAL = 3
XDBC_INTEGER = 4
XDBC_SMALLINT = 5
XDBC_REAL = 7
XDBC_DOUBLE = 8
XDBC_DATETIME = 9
XDBC_INTERVAL = 10
XDBC_VARCHAR = 12
XDBC_DATE = 91
XDBC_TIME = 92
XDBC_TIMESTAMP = 93
XDBC_BINARY = -2
XDBC_VARBINARY = -3
XDBC_LONGVARBINARY = -4
XDBC_BIGINT = -5
XDBC_TINYINT = -6
XDBC_BIT = -7

# XdbcDatetimeSubcode values used below
SUBCODE_DATE = 1
SUBCODE_TIME = 2
SUBCODE_TIMESTAMP = 3
SUBCODE_TIMESTAMP_WITH_TIMEZONE = 5

# Nullable and Searchable enums
NULLABILITY_NULLABLE = 1
SEARCHABLE_BASIC = 2  # any operator but LIKE
SEARCHABLE_FULL = 3  # any operator, LIKE included


@dataclass(frozen=True)
class SqlType:
    """One row of GetXdbcTypeInfo (the columns the schema makes nullable default to None)."""

    type_name: str
    data_type: int
    column_size: int | None = None
    literal_prefix: str | None = None
    literal_suffix: str | None = None
    create_params: tuple[str, ...] | None = None
    case_sensitive: bool = False
    searchable: int = SEARCHABLE_BASIC
    unsigned: bool | None = None  # None: not numeric
    minimum_scale: int | None = None
    maximum_scale: int | None = None
    sql_data_type: int | None = None  # None: the same as data_type
    datetime_subcode: int | None = None
    num_prec_radix: int | None = None

    def row(self) -> dict[str, object]:
        numeric = self.unsigned is not None
        return {
            "type_name": self.type_name,
            "data_type": self.data_type,
            "column_size": self.column_size,
            "literal_prefix": self.literal_prefix,
            "literal_suffix": self.literal_suffix,
            "create_params": list(self.create_params) if self.create_params is not None else None,
            "nullable": NULLABILITY_NULLABLE,
            "case_sensitive": self.case_sensitive,
            "searchable": self.searchable,
            "unsigned_attribute": self.unsigned,
            "fixed_prec_scale": False,
            "auto_increment": False if numeric else None,
            "local_type_name": None,
            "minimum_scale": self.minimum_scale,
            "maximum_scale": self.maximum_scale,
            "sql_data_type": self.data_type if self.sql_data_type is None else self.sql_data_type,
            "datetime_subcode": self.datetime_subcode,
            "num_prec_radix": self.num_prec_radix,
            "interval_precision": None,
        }


def _integer(name: str, code: int, digits: int, unsigned: bool = False) -> SqlType:
    return SqlType(name, code, digits, unsigned=unsigned, minimum_scale=0, maximum_scale=0, num_prec_radix=10)


def _datetime(name: str, code: int, size: int, subcode: int, prefix: str) -> SqlType:
    return SqlType(name, code, size, f"{prefix} '", "'", sql_data_type=XDBC_DATETIME, datetime_subcode=subcode)


SQL_TYPES: tuple[SqlType, ...] = (
    SqlType("BOOLEAN", XDBC_BIT, 1),
    _integer("TINYINT", XDBC_TINYINT, 3),
    _integer("UTINYINT", XDBC_TINYINT, 3, unsigned=True),
    _integer("SMALLINT", XDBC_SMALLINT, 5),
    _integer("USMALLINT", XDBC_SMALLINT, 5, unsigned=True),
    _integer("INTEGER", XDBC_INTEGER, 10),
    _integer("UINTEGER", XDBC_INTEGER, 10, unsigned=True),
    _integer("BIGINT", XDBC_BIGINT, 19),
    _integer("UBIGINT", XDBC_BIGINT, 20, unsigned=True),
    SqlType("REAL", XDBC_REAL, 24, unsigned=False, num_prec_radix=2),
    SqlType("DOUBLE", XDBC_DOUBLE, 53, unsigned=False, num_prec_radix=2),
    SqlType(
        "DECIMAL", XDBC_DECIMAL, 38, create_params=("precision", "scale"), unsigned=False,
        minimum_scale=0, maximum_scale=38, num_prec_radix=10,
    ),
    SqlType(
        "NUMERIC", XDBC_NUMERIC, 38, create_params=("precision", "scale"), unsigned=False,
        minimum_scale=0, maximum_scale=38, num_prec_radix=10,
    ),
    SqlType("VARCHAR", XDBC_VARCHAR, None, "'", "'", ("length",), case_sensitive=True, searchable=SEARCHABLE_FULL),
    SqlType("BINARY", XDBC_BINARY),
    SqlType("VARBINARY", XDBC_VARBINARY),
    SqlType("BLOB", XDBC_LONGVARBINARY),
    _datetime("DATE", XDBC_DATE, 10, SUBCODE_DATE, "DATE"),
    _datetime("TIME", XDBC_TIME, 15, SUBCODE_TIME, "TIME"),
    _datetime("TIMESTAMP", XDBC_TIMESTAMP, 26, SUBCODE_TIMESTAMP, "TIMESTAMP"),
    _datetime(
        "TIMESTAMP WITH TIME ZONE", XDBC_TIMESTAMP, 32, SUBCODE_TIMESTAMP_WITH_TIMEZONE, "TIMESTAMP WITH TIME ZONE"
    ),
    SqlType("INTERVAL", XDBC_INTERVAL, None, "INTERVAL '", "'"),
)  # fmt: skip


def type_rows(data_type: int | None) -> list[dict[str, object]]:
    """The rows for `data_type` (all when None), ordered by data_type, then type_name."""
    chosen = [t for t in SQL_TYPES if data_type is None or t.data_type == data_type]
    return [t.row() for t in sorted(chosen, key=lambda t: (t.data_type, t.type_name))]


_INTEGER_NAMES = {8: "TINYINT", 16: "SMALLINT", 32: "INTEGER", 64: "BIGINT"}


def arrow_type_name(data_type: pa.DataType) -> str:  # noqa: C901 - one flat mapping of Arrow types to names
    """The SQL name of an Arrow type, as DuckDB spells it."""
    t = pa.types
    if t.is_boolean(data_type):
        return "BOOLEAN"
    if t.is_integer(data_type):
        name = _INTEGER_NAMES[data_type.bit_width]
        return f"U{name}" if t.is_unsigned_integer(data_type) else name
    if t.is_float32(data_type) or t.is_float16(data_type):
        return "REAL"
    if t.is_float64(data_type):
        return "DOUBLE"
    if t.is_decimal(data_type):
        return f"DECIMAL({data_type.precision},{data_type.scale})"
    if t.is_string(data_type) or t.is_large_string(data_type) or t.is_string_view(data_type):
        return "VARCHAR"
    if t.is_binary(data_type) or t.is_large_binary(data_type) or t.is_fixed_size_binary(data_type):
        return "BLOB"
    if t.is_date(data_type):
        return "DATE"
    if t.is_time(data_type):
        return "TIME"
    if t.is_timestamp(data_type):
        return "TIMESTAMP WITH TIME ZONE" if data_type.tz else "TIMESTAMP"
    if t.is_interval(data_type) or t.is_duration(data_type):
        return "INTERVAL"
    if t.is_list(data_type) or t.is_large_list(data_type):
        return f"{arrow_type_name(data_type.value_type)}[]"
    return str(data_type).upper()


def column_size(data_type: pa.DataType) -> int | None:
    """Precision (numbers) or length of the text form (dates and times) of an Arrow type; None when unknown."""
    if pa.types.is_decimal(data_type):
        return int(data_type.precision)
    name = arrow_type_name(data_type)
    for sql_type in SQL_TYPES:
        if sql_type.type_name == name:
            return sql_type.column_size
    return None
