"""The named-query catalogue: declarative entries loaded from `schemas/catalog.toml`.

Each entry names its SQL (DuckDB named placeholders such as `$domain`), typed
parameters with defaults, the engine it runs on, a cache TTL and the tables it reads.
`load_catalog` validates every entry at start-up; `NamedQuery.bind` turns request
parameters into typed values that are always bound, never pasted into SQL text.
"""

from __future__ import annotations

import datetime as dt
import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify

from flight_server.errors import InvalidArgument, NotFound

ENGINES = ("duckdb", "postgres", "hybrid")
# keys of a command beside its parameters: clients pass them as keyword arguments next
# to a named query's parameters (chrono_flight_client), so no parameter may be named so
RESERVED_PARAM_NAMES = ("engine", "cache", "max_staleness_s")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("expected an integer")
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    return float(value)


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _to_date(value: Any) -> dt.date:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    return dt.date.fromisoformat(_to_str(value))


def _to_timestamp(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(_to_str(value))


def _to_str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError("expected a list of strings (or a comma-separated string)")


# parameter type name -> (converter, Arrow type shown to clients)
PARAM_TYPES: dict[str, tuple[Any, pa.DataType]] = {
    "string": (_to_str, pa.string()),
    "integer": (_to_int, pa.int64()),
    "float": (_to_float, pa.float64()),
    "boolean": (_to_bool, pa.bool_()),
    "date": (_to_date, pa.date32()),
    "timestamp": (_to_timestamp, pa.timestamp("us")),
    "string_list": (_to_str_list, pa.list_(pa.string())),
}


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    description: str
    required: bool = False
    default: Any = None
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    def convert(self, raw: Any) -> Any:
        converter = PARAM_TYPES[self.type][0]
        try:
            value = converter(raw)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(
                f"parameter '{self.name}' must be of type {self.type}: {exc} (got {raw!r:.60})"
            ) from None
        if self.choices and value not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise InvalidArgument(f"parameter '{self.name}' must be one of: {allowed} (got {value!r:.60})")
        if self.minimum is not None and value < self.minimum:
            raise InvalidArgument(f"parameter '{self.name}' must be at least {self.minimum} (got {value})")
        if self.maximum is not None and value > self.maximum:
            raise InvalidArgument(f"parameter '{self.name}' must be at most {self.maximum} (got {value})")
        return value

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required}
        if not self.required:
            out["default"] = _jsonable(self.default)
        if self.choices:
            out["choices"] = list(self.choices)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        out["description"] = self.description
        return out


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    sql: str
    engine: str
    ttl_s: int
    tables: tuple[str, ...]
    params: tuple[Parameter, ...] = field(default_factory=tuple)

    def bind(self, raw: Mapping[str, Any] | None) -> dict[str, Any]:
        """Typed values for every parameter, defaults filled in; unknown names rejected."""
        raw = dict(raw or {})
        known = {p.name for p in self.params}
        unknown = sorted(set(raw) - known)
        if unknown:
            listing = ", ".join(sorted(known)) or "none"
            raise InvalidArgument(f"unknown parameter '{unknown[0]}' for {self.name}; it takes: {listing}")
        bound: dict[str, Any] = {}
        for param in self.params:
            if param.name in raw and raw[param.name] is not None:
                bound[param.name] = param.convert(raw[param.name])
            elif param.required:
                raise InvalidArgument(f"missing required parameter '{param.name}' ({param.type}) for {self.name}")
            else:
                bound[param.name] = param.default
        return bound

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "engine": self.engine,
            "ttl_s": self.ttl_s,
            "tables": list(self.tables),
            "params": [p.describe() for p in self.params],
        }


class Catalog:
    """Named queries by name."""

    def __init__(self, queries: list[NamedQuery]) -> None:
        self._queries = {q.name: q for q in queries}

    def __iter__(self) -> Any:
        return iter(self._queries.values())

    def __len__(self) -> int:
        return len(self._queries)

    def names(self) -> list[str]:
        return sorted(self._queries)

    def get(self, name: str) -> NamedQuery:
        try:
            return self._queries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._queries, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; ListFlights shows the catalogue"
            raise NotFound(f"unknown named query '{name:.80}'{hint}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


def _parse_param(query: str, raw: dict[str, Any]) -> Parameter:
    name = raw.get("name")
    ptype = raw.get("type")
    if not isinstance(name, str) or ptype not in PARAM_TYPES:
        raise ValueError(f"{query}: every parameter needs a name and a type in {sorted(PARAM_TYPES)}")
    if name in RESERVED_PARAM_NAMES:
        raise ValueError(f"{query}: parameter name '{name}' is reserved for command options; choose another")
    param = Parameter(
        name=name,
        type=ptype,
        description=str(raw.get("description", "")),
        required=bool(raw.get("required", False)),
        choices=tuple(raw.get("choices", ())),
        minimum=raw.get("minimum"),
        maximum=raw.get("maximum"),
    )
    if "default" in raw:
        param = Parameter(**{**param.__dict__, "default": param.convert(raw["default"])})
    if not param.description:
        raise ValueError(f"{query}: parameter '{name}' has no description")
    return param


def _placeholders(sql: str) -> set[str]:
    tree = sqlglot.parse_one(sql, read="duckdb")
    return {p.name for p in tree.find_all(exp.Placeholder) if p.name}


def check_columns(sql: str, columns: Mapping[str, Mapping[str, str]]) -> None:
    """Every column `sql` names resolves against `columns` (table -> column -> type); else ValueError.

    The check of a named query whose engine cannot be asked (PostgreSQL down at
    start-up): its tables' columns as declared instead of as the engine reports them.
    """
    try:
        qualify(
            sqlglot.parse_one(sql, read="duckdb"),
            schema={t: dict(c) for t, c in columns.items()},
            dialect="duckdb",
            validate_qualify_columns=True,
        )
    except SqlglotError as exc:
        raise ValueError(str(exc).splitlines()[0]) from None


def load_catalog(path: Path) -> Catalog:
    """Load and validate every entry; a broken entry stops the server at start-up."""
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    queries: list[NamedQuery] = []
    for raw in data.get("query", []):
        name = raw.get("name", "?")
        params = tuple(_parse_param(name, p) for p in raw.get("params", []))
        query = NamedQuery(
            name=name,
            description=str(raw.get("description", "")).strip(),
            sql=str(raw.get("sql", "")).strip(),
            engine=raw.get("engine", "duckdb"),
            ttl_s=int(raw.get("ttl_s", 300)),
            tables=tuple(raw.get("tables", ())),
            params=params,
        )
        if query.engine not in ENGINES:
            raise ValueError(f"{name}: engine must be one of {ENGINES}")
        if not query.description or not query.sql or not query.tables:
            raise ValueError(f"{name}: description, sql and tables are required")
        declared = {p.name for p in params}
        used = _placeholders(query.sql)
        if declared != used:
            raise ValueError(f"{name}: parameters declared {sorted(declared)} but the SQL uses {sorted(used)}")
        if name in {q.name for q in queries}:
            raise ValueError(f"{name}: defined twice")
        queries.append(query)
    return Catalog(queries)
