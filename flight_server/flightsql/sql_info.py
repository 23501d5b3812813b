"""Flight SQL `GetSqlInfo`: what the server and its SQL dialect support.

Values follow the `SqlInfo` enum of FlightSql.proto, each in the member of the dense
union its type calls for: strings, booleans, int64 limits (0: no limit or unknown),
int32 ordinals and bitmasks, string lists and the int32 -> list<int32> conversion map.
The dialect described is DuckDB's, the one clients write (PostgreSQL routes are
translated). The server is read-only for SQL: no DDL, no updates, no transactions;
rows arrive through bulk ingest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from flight_server.context import RequestContext
from flight_server.flightsql.catalogs import fetch_rows

if TYPE_CHECKING:
    from flight_server.flightsql.deps import FlightSqlDeps

# dense union type codes of the `value` column
STRING, BOOL, BIGINT, INT32, STRING_LIST, INT32_MAP = 0, 1, 2, 3, 4, 5

# SqlSupportsConvert codes
(
    C_BIGINT, C_BINARY, C_BIT, C_CHAR, C_DATE, C_DECIMAL, C_FLOAT, C_INTEGER, C_INTERVAL_DAY_TIME,
    C_INTERVAL_YEAR_MONTH, C_LONGVARBINARY, C_LONGVARCHAR, C_NUMERIC, C_REAL, C_SMALLINT, C_TIME,
    C_TIMESTAMP, C_TINYINT, C_VARBINARY, C_VARCHAR,
) = range(20)  # fmt: skip
_NUMBERS = [C_BIGINT, C_BIT, C_DECIMAL, C_FLOAT, C_INTEGER, C_NUMERIC, C_REAL, C_SMALLINT, C_TINYINT]
_TEXT = [C_CHAR, C_LONGVARCHAR, C_VARCHAR]
_BYTES = [C_BINARY, C_LONGVARBINARY, C_VARBINARY]
_INTERVALS = [C_INTERVAL_DAY_TIME, C_INTERVAL_YEAR_MONTH]


def _conversions() -> dict[int, list[int]]:
    """What CAST converts into what, by SqlSupportsConvert code."""
    out: dict[int, list[int]] = {}
    for code in _NUMBERS:
        out[code] = sorted(_NUMBERS + _TEXT)
    for code in _TEXT:
        out[code] = sorted(_NUMBERS + _TEXT + _BYTES + _INTERVALS + [C_DATE, C_TIME, C_TIMESTAMP])
    for code in _BYTES:
        out[code] = sorted(_BYTES + _TEXT)
    for code in _INTERVALS:
        out[code] = sorted(_INTERVALS + _TEXT)
    out[C_DATE] = sorted([C_DATE, C_TIMESTAMP, *_TEXT])
    out[C_TIME] = sorted([C_TIME, *_TEXT])
    out[C_TIMESTAMP] = sorted([C_DATE, C_TIME, C_TIMESTAMP, *_TEXT])
    return dict(sorted(out.items()))


NUMERIC_FUNCTIONS = (
    "abs", "acos", "asin", "atan", "atan2", "cbrt", "ceil", "ceiling", "cos", "cot", "degrees", "even", "exp",
    "factorial", "floor", "gcd", "greatest", "lcm", "least", "ln", "log", "log10", "log2", "mod", "pi", "pow",
    "power", "radians", "random", "round", "sign", "sin", "sqrt", "tan", "trunc",
)  # fmt: skip
STRING_FUNCTIONS = (
    "ascii", "chr", "concat", "concat_ws", "contains", "ends_with", "instr", "left", "length", "lower", "lpad",
    "ltrim", "md5", "position", "regexp_extract", "regexp_matches", "regexp_replace", "repeat", "replace",
    "reverse", "right", "rpad", "rtrim", "split_part", "starts_with", "string_split", "strpos", "substr",
    "substring", "trim", "upper",
)  # fmt: skip
SYSTEM_FUNCTIONS = ("coalesce", "current_database", "current_schema", "ifnull", "nullif", "typeof", "version")
DATETIME_FUNCTIONS = (
    "age", "current_date", "date_add", "date_diff", "date_part", "date_sub", "date_trunc", "datediff", "datepart",
    "dayname", "dayofmonth", "dayofweek", "dayofyear", "epoch", "epoch_ms", "extract", "hour", "last_day",
    "make_date", "make_time", "make_timestamp", "minute", "month", "monthname", "now", "quarter", "second",
    "strftime", "strptime", "time_bucket", "to_timestamp", "week", "year",
)  # fmt: skip

_KEYWORDS_SQL = "SELECT upper(keyword_name) AS keyword FROM duckdb_keywords() ORDER BY 1"


def _static_info(deps: FlightSqlDeps) -> dict[int, tuple[int, Any]]:
    """Every SqlInfo id the server answers, with its union type code and value."""
    return {
        # server
        0: (STRING, "Chrono Flight"),
        1: (STRING, deps.version),
        2: (STRING, pa.__version__),
        3: (BOOL, True),  # read-only: updates are refused; rows arrive through bulk ingest
        4: (BOOL, True),  # SQL
        5: (BOOL, False),  # Substrait
        8: (INT32, 0),  # SqlSupportedTransaction: none
        9: (BOOL, True),  # cancel
        10: (BOOL, True),  # bulk ingestion (CommandStatementIngest)
        11: (BOOL, False),  # transactions for bulk ingestion
        # prepared statement handles close after this many idle milliseconds (each use resets it)
        100: (INT32, min(2**31 - 1, int(deps.settings.flightsql.prepared_idle_s * 1000))),
        101: (INT32, 0),  # transaction timeout (ms): none
        # SQL syntax
        500: (BOOL, False),  # DDL: catalogs
        501: (BOOL, False),  # schemas
        502: (BOOL, False),  # tables
        503: (INT32, 1),  # identifier case: case insensitive (DuckDB keeps the case, ignores it in lookups)
        504: (STRING, '"'),
        505: (INT32, 1),  # quoted identifiers: case insensitive too
        506: (BOOL, True),  # all tables are selectable
        507: (INT32, 3),  # SqlNullOrdering: nulls sorted at end (DuckDB's NULLS LAST default)
        509: (STRING_LIST, list(NUMERIC_FUNCTIONS)),
        510: (STRING_LIST, list(STRING_FUNCTIONS)),
        511: (STRING_LIST, list(SYSTEM_FUNCTIONS)),
        512: (STRING_LIST, list(DATETIME_FUNCTIONS)),
        513: (STRING, "\\"),  # search string escape
        514: (STRING, ""),  # extra name characters
        515: (BOOL, True),  # column aliasing
        516: (BOOL, True),  # NULL || 'x' is NULL
        517: (INT32_MAP, _conversions()),
        518: (BOOL, True),  # table correlation names
        519: (BOOL, False),  # correlation names need not differ from table names
        520: (BOOL, True),  # expressions in ORDER BY
        521: (BOOL, True),  # ORDER BY unrelated columns
        522: (INT32, 0b11),  # GROUP BY: unrelated, beyond select
        523: (BOOL, True),  # LIKE ... ESCAPE
        524: (BOOL, True),  # non-nullable columns
        525: (INT32, 0b111),  # grammar: minimum, core, extended
        526: (INT32, 0b011),  # ANSI92: entry, intermediate
        527: (BOOL, False),  # integrity enhancement facility
        528: (INT32, 2),  # outer joins: full
        529: (STRING, "schema"),
        530: (STRING, "procedure"),
        531: (STRING, "catalog"),
        532: (BOOL, True),  # catalog at the start of a qualified name
        533: (INT32, 0),  # schema actions
        534: (INT32, 0),  # catalog actions
        535: (INT32, 0),  # positioned commands
        536: (BOOL, False),  # SELECT FOR UPDATE
        537: (BOOL, False),  # stored procedures
        538: (INT32, 0b1111),  # subqueries: comparisons, EXISTS, IN, quantified
        539: (BOOL, True),  # correlated subqueries
        540: (INT32, 0b11),  # UNION, UNION ALL
        **{code: (BIGINT, 0) for code in range(541, 556)},  # maximum lengths and counts: none or unknown
        556: (BOOL, False),  # max row size includes blobs
        **{code: (BIGINT, 0) for code in range(557, 562)},
        562: (INT32, 0),  # default isolation: none
        563: (BOOL, False),  # transactions
        564: (INT32, 0b1),  # isolation levels: none
        565: (BOOL, False),  # DDL commits a transaction
        566: (BOOL, False),  # DDL in transactions ignored
        567: (INT32, 0b10),  # result sets: forward only
        568: (INT32, 0),  # concurrency of unspecified result sets
        569: (INT32, 0b10),  # forward only: read only
        570: (INT32, 0),  # scroll sensitive: not supported
        571: (INT32, 0),  # scroll insensitive: not supported
        572: (BOOL, False),  # batch updates
        573: (BOOL, False),  # savepoints
        574: (BOOL, False),  # named parameters in callable statements
        575: (BOOL, False),  # LOB updates on a copy
        576: (BOOL, False),  # stored functions with call syntax
    }


SQL_KEYWORDS = 508


def info_values(deps: FlightSqlDeps, ctx: RequestContext, info: list[int]) -> list[tuple[int, int, Any]]:
    """(id, union type code, value) for the requested ids, in request order; [] asks for all.

    Ids the server does not know are left out: the protocol lets a server answer more
    than the required set, and a driver asking for a newer id gets the rest.
    """
    known = _static_info(deps)
    wanted = list(dict.fromkeys(info)) if info else sorted([*known, SQL_KEYWORDS])
    out = []
    for code in wanted:
        if code == SQL_KEYWORDS:
            keywords = [row["keyword"] for row in fetch_rows(deps.duckdb, ctx, _KEYWORDS_SQL)]
            out.append((code, STRING_LIST, keywords))
        elif code in known:
            out.append((code, *known[code]))
    return out


def info_table(schema: pa.Schema, values: list[tuple[int, int, Any]]) -> pa.Table:
    """The GetSqlInfo result: `info_name` and the dense union `value`."""
    union = schema.field("value").type
    children: list[list[Any]] = [[] for _ in range(union.num_fields)]
    type_codes, offsets = [], []
    for _, code, value in values:
        type_codes.append(code)
        offsets.append(len(children[code]))
        children[code].append(list(value.items()) if code == INT32_MAP else value)
    arrays = [pa.array(items, type=union.field(i).type) for i, items in enumerate(children)]
    codes = pa.array(type_codes, type=pa.int8())
    value_offsets = pa.array(offsets, type=pa.int32())
    column = pa.UnionArray.from_buffers(
        union, len(values), [None, codes.buffers()[1], value_offsets.buffers()[1]], children=arrays
    )
    names = pa.array([code for code, _, _ in values], type=pa.uint32())
    return pa.Table.from_arrays([names, column], schema=schema)
