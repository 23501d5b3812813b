"""Decoding of JSON commands, tickets and dataset paths into a `Command`.

A command is a JSON object: `{"query": name, "params": {...}}` for a named query or
`{"sql": text, "params": [...]}` for raw SQL, with optional `engine`, `cache` and
`max_staleness_s`. The same JSON is a valid DoGet ticket. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from flight_server.errors import InvalidArgument

ENGINE_HINTS = ("auto", "duckdb", "postgres")
CACHE_MODES = ("use", "bypass", "refresh")
_KEYS = {"query", "sql", "params", "engine", "cache", "max_staleness_s", "dataset"}
MAX_COMMAND_BYTES = 1 << 20


@dataclass(frozen=True)
class Command:
    kind: str  # "query", "sql" or "dataset"
    target: str  # the query name, the SQL text or the dataset name
    params: dict[str, Any] | list[Any] = field(default_factory=dict)
    engine: str = "auto"
    cache: str = "use"
    max_staleness_s: float | None = None

    def to_json(self) -> bytes:
        """Canonical JSON of this command (the ticket the server hands out)."""
        body: dict[str, Any] = {self.kind: self.target}
        if self.params:
            body["params"] = self.params
        if self.engine != "auto":
            body["engine"] = self.engine
        if self.cache != "use":
            body["cache"] = self.cache
        if self.max_staleness_s is not None:
            body["max_staleness_s"] = self.max_staleness_s
        return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()

    def describe(self) -> str:
        """A short label for logs and metrics: the query name or 'sql'."""
        return self.target if self.kind != "sql" else "sql"


def parse_command(raw: bytes) -> Command:
    """Decode a descriptor command or ticket; INVALID_ARGUMENT for anything malformed."""
    if len(raw) > MAX_COMMAND_BYTES:
        raise InvalidArgument(f"command is larger than {MAX_COMMAND_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"command must be a JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("command must be a JSON object with 'query' or 'sql'")
    unknown = sorted(set(body) - _KEYS)
    if unknown:
        raise InvalidArgument(f"unknown command key '{unknown[0]}'; allowed: {', '.join(sorted(_KEYS))}")
    kinds = [k for k in ("query", "sql", "dataset") if k in body]
    if len(kinds) != 1:
        raise InvalidArgument("command needs exactly one of 'query' (a named query) or 'sql'")
    kind = kinds[0]
    target = body[kind]
    if not isinstance(target, str) or not target.strip():
        raise InvalidArgument(f"'{kind}' must be a non-empty string")
    params = body.get("params", {} if kind != "sql" else [])
    if kind == "query" and not isinstance(params, dict):
        raise InvalidArgument("'params' of a named query must be a JSON object")
    if kind == "sql" and not isinstance(params, list | dict):
        raise InvalidArgument("'params' of SQL must be a JSON array (for $1, $2, ...) or object")
    if kind == "dataset" and params:
        raise InvalidArgument("a dataset takes no 'params'")
    engine = body.get("engine", "auto")
    if engine not in ENGINE_HINTS:
        raise InvalidArgument(f"'engine' must be one of {', '.join(ENGINE_HINTS)}")
    cache = body.get("cache", "use")
    if cache not in CACHE_MODES:
        raise InvalidArgument(f"'cache' must be one of {', '.join(CACHE_MODES)}")
    staleness = body.get("max_staleness_s")
    if staleness is not None and (
        isinstance(staleness, bool) or not isinstance(staleness, int | float) or staleness < 0
    ):
        raise InvalidArgument("'max_staleness_s' must be a non-negative number")
    return Command(kind, target, params, engine, cache, staleness)


def dataset_command(path: list[str]) -> Command:
    """The command for a `FlightDescriptor.for_path(dataset)`: the whole dataset."""
    if len(path) != 1 or not path[0]:
        raise InvalidArgument("a path descriptor names one dataset, e.g. for_path('cdx_records')")
    name = path[0].decode() if isinstance(path[0], bytes) else str(path[0])
    return Command("dataset", name)
