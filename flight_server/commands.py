"""Decoding of JSON commands, tickets and dataset paths into a `Command`.

A command is a JSON object: `{"query": name, "params": {...}}` for a named query or
`{"sql": text, "params": [...]}` for raw SQL, with optional `engine`, `cache` and
`max_staleness_s`. The same JSON is a valid DoGet ticket. Nothing is ever unpickled.

Every JSON a client sends (commands, tickets, action bodies, subscriptions) is decoded
by `load_json`: anything that is not JSON, or nests deeper than `MAX_JSON_DEPTH`
arrays and objects, is INVALID_ARGUMENT before any other code looks at it, so no
handler meets a structure deep enough to exhaust the interpreter's recursion.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from flight_server.errors import InvalidArgument

ENGINE_HINTS = ("auto", "duckdb", "postgres")
CACHE_MODES = ("use", "bypass", "refresh")
_KEYS = {"query", "sql", "params", "engine", "cache", "max_staleness_s", "dataset"}
MAX_COMMAND_BYTES = 1 << 20
MAX_JSON_DEPTH = 32  # arrays and objects inside one another; parameters need a few levels at most


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


def load_json(raw: bytes | str, what: str) -> Any:
    """The JSON value a client sent as `what`; INVALID_ARGUMENT when it is not JSON or too deep.

    The depth is checked on the decoded value without recursion; a value so deep that
    the decoder itself gives up (a RecursionError) is refused with the same message.
    """
    too_deep = f"{what} nests arrays and objects deeper than {MAX_JSON_DEPTH} levels; flatten it"
    try:
        value = json.loads(raw)
    except RecursionError:
        raise InvalidArgument(too_deep) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{what} must be JSON: {exc}") from None
    if _depth_exceeds(value, MAX_JSON_DEPTH):
        raise InvalidArgument(too_deep)
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels in `value` (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children)
    return False


def parse_command(raw: bytes) -> Command:
    """Decode a descriptor command or ticket; INVALID_ARGUMENT for anything malformed."""
    if len(raw) > MAX_COMMAND_BYTES:
        raise InvalidArgument(f"command is larger than {MAX_COMMAND_BYTES} bytes")
    body = load_json(raw, "a command")
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
    _check_params(kind, params)
    engine = body.get("engine", "auto")
    if engine not in ENGINE_HINTS:
        raise InvalidArgument(f"'engine' must be one of {', '.join(ENGINE_HINTS)}")
    cache = body.get("cache", "use")
    if cache not in CACHE_MODES:
        raise InvalidArgument(f"'cache' must be one of {', '.join(CACHE_MODES)}")
    staleness = body.get("max_staleness_s")
    _check_staleness(staleness)
    return Command(kind, target, params, engine, cache, staleness)


def _check_params(kind: str, params: Any) -> None:
    """INVALID_ARGUMENT unless `params` has the shape a command of `kind` takes."""
    if kind == "query" and not isinstance(params, dict):
        raise InvalidArgument("'params' of a named query must be a JSON object")
    if kind == "sql" and not isinstance(params, list | dict):
        raise InvalidArgument("'params' of SQL must be a JSON array (for $1, $2, ...) or object")
    if kind == "dataset" and params:
        raise InvalidArgument("a dataset takes no 'params'")


def _check_staleness(staleness: Any) -> None:
    """INVALID_ARGUMENT unless `staleness` is absent or a finite, non-negative number."""
    if staleness is not None and (
        isinstance(staleness, bool)
        or not isinstance(staleness, int | float)
        or not math.isfinite(staleness)
        or staleness < 0
    ):
        raise InvalidArgument("'max_staleness_s' must be a finite, non-negative number of seconds")


def dataset_command(path: list[str]) -> Command:
    """The command for a `FlightDescriptor.for_path(dataset)`: the whole dataset."""
    if len(path) != 1 or not path[0]:
        raise InvalidArgument("a path descriptor names one dataset, e.g. for_path('cdx_records')")
    name = path[0].decode() if isinstance(path[0], bytes) else str(path[0])
    return Command("dataset", name)
