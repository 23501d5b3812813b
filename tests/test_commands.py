"""`parse_command`: what a valid command decodes to, and the reason each invalid one is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flight_server.commands import MAX_COMMAND_BYTES, MAX_JSON_DEPTH, Command, parse_command
from flight_server.errors import InvalidArgument


def _raw(body: Any) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"query": "domains.top"}, Command("query", "domains.top", {})),
        (
            {"query": "domains.top", "params": {"limit": 5}, "engine": "duckdb", "cache": "bypass"},
            Command("query", "domains.top", {"limit": 5}, "duckdb", "bypass"),
        ),
        ({"sql": "SELECT 1"}, Command("sql", "SELECT 1", [])),
        ({"sql": "SELECT $1", "params": [7]}, Command("sql", "SELECT $1", [7])),
        ({"sql": "SELECT 1", "params": {"a": 1}}, Command("sql", "SELECT 1", {"a": 1})),
        ({"sql": "SELECT 1", "engine": "postgres"}, Command("sql", "SELECT 1", [], "postgres")),
        ({"sql": "SELECT 1", "cache": "refresh"}, Command("sql", "SELECT 1", [], cache="refresh")),
        ({"sql": "SELECT 1", "max_staleness_s": 0}, Command("sql", "SELECT 1", [], max_staleness_s=0)),
        ({"sql": "SELECT 1", "max_staleness_s": 2.5}, Command("sql", "SELECT 1", [], max_staleness_s=2.5)),
        ({"dataset": "cdx_records"}, Command("dataset", "cdx_records", {})),
    ],
)
def test_commands_valid_command_decodes(body: dict[str, Any], expected: Command) -> None:
    assert parse_command(_raw(body)) == expected


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", r"^a command must be JSON: "),
        (b"\xff\xfe", r"^a command must be JSON: "),
        (_raw(["query", "x"]), r"^command must be a JSON object with 'query' or 'sql'$"),
        (_raw("SELECT 1"), r"^command must be a JSON object with 'query' or 'sql'$"),
        (_raw({"sql": "SELECT 1", "limit": 3}), r"^unknown command key 'limit'; allowed: cache, dataset, "),
        (_raw({}), r"^command needs exactly one of 'query' \(a named query\) or 'sql'$"),
        (_raw({"query": "a", "sql": "SELECT 1"}), r"^command needs exactly one of 'query'"),
        (_raw({"query": ""}), r"^'query' must be a non-empty string$"),
        (_raw({"sql": "   "}), r"^'sql' must be a non-empty string$"),
        (_raw({"sql": 1}), r"^'sql' must be a non-empty string$"),
        (_raw({"query": "a", "params": [1]}), r"^'params' of a named query must be a JSON object$"),
        (
            _raw({"sql": "SELECT 1", "params": 1}),
            r"^'params' of SQL must be a JSON array \(for \$1, \$2, \.\.\.\) or object$",
        ),
        (_raw({"dataset": "cdx_records", "params": {"a": 1}}), r"^a dataset takes no 'params'$"),
        (_raw({"sql": "SELECT 1", "engine": "spark"}), r"^'engine' must be one of auto, duckdb, postgres$"),
        (_raw({"sql": "SELECT 1", "cache": "never"}), r"^'cache' must be one of use, bypass, refresh$"),
        (_raw({"sql": "SELECT 1", "max_staleness_s": -1}), r"^'max_staleness_s' must be a finite, non-negative"),
        (_raw({"sql": "SELECT 1", "max_staleness_s": True}), r"^'max_staleness_s' must be a finite, non-negative"),
        (_raw({"sql": "SELECT 1", "max_staleness_s": "5"}), r"^'max_staleness_s' must be a finite, non-negative"),
        (b'{"sql": "SELECT 1", "max_staleness_s": Infinity}', r"^'max_staleness_s' must be a finite, non-negative"),
        (
            _raw({"sql": "SELECT 1", "params": _nested(MAX_JSON_DEPTH)}),
            rf"^a command nests arrays and objects deeper than {MAX_JSON_DEPTH} levels; flatten it$",
        ),
        (b" " * (MAX_COMMAND_BYTES + 1), rf"^command is larger than {MAX_COMMAND_BYTES} bytes$"),
    ],
)
def test_commands_invalid_command_is_refused_with_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        parse_command(raw)
