"""The `flight-server` command as a user runs it: demo-data, serve --demo, demo-tokens, query."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from support.servers import ServerHandle, serve_env
from support.waiting import wait_for

BIN = Path(sys.executable).parent / "flight-server"


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return serve_env(data_dir, **extra)


def _cli(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """`flight-server serve --demo --rows 20000` on an empty data directory."""
    data_dir = tmp_path_factory.mktemp("cli-data")
    env = _env(data_dir)
    proc = subprocess.Popen(
        [str(BIN), "serve", "--demo", "--rows", "20000"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    url = None
    deadline = time.monotonic() + 90
    lines = []
    while time.monotonic() < deadline and url is None:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        match = re.search(r"listening on (grpc://\S+)", line)
        url = match.group(1) if match else None
    assert url, "server did not start:\n" + "".join(lines)
    yield url, env
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def test_cli_serve_demo_fills_empty_data_directory(served: tuple[str, dict[str, str]]) -> None:
    url, env = served
    out = _cli("query", "--url", url, "SELECT count(*) AS n FROM cdx_records", "--format", "json", env=env)
    assert json.loads(out.stdout) == [{"n": 20000}]


def test_cli_query_named_as_csv(served: tuple[str, dict[str, str]]) -> None:
    url, env = served
    out = _cli("query", "--url", url, "--name", "domains.top", "-p", "limit=3", "--format", "csv", env=env)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 3
    assert rows[0]["domain"] == "example.com"


def test_cli_query_sql_params_and_table_output(served: tuple[str, dict[str, str]]) -> None:
    url, env = served
    out = _cli("query", "--url", url, "SELECT $1 AS d, $2 + 1 AS n", "-p", "example.com", "-p", "41", env=env)
    assert "example.com" in out.stdout and "42" in out.stdout
    assert "1 rows" in out.stdout


def test_cli_query_parquet_to_file(served: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, env = served
    target = tmp_path / "top.parquet"
    _cli(
        "query",
        "--url",
        url,
        "--name",
        "domains.top",
        "-p",
        "limit=7",
        "--format",
        "parquet",
        "-o",
        str(target),
        env=env,
    )
    assert pq.read_table(target).num_rows == 7


def test_cli_query_error_is_one_line_with_status(served: tuple[str, dict[str, str]]) -> None:
    url, env = served
    out = _cli("query", "--url", url, "--name", "domains.tpo", env=env, check=False)
    assert out.returncode == 2
    assert "domains.top" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_demo_data_regenerates_with_progress(tmp_path: Path) -> None:
    env = _env(tmp_path)
    out = _cli("demo-data", "--rows", "15000", env=env)
    assert "15,000 CDX records" in out.stderr
    out = _cli("demo-data", "--rows", "12000", "--seed", "7", env=env)
    assert "12,000 CDX records" in out.stderr
    assert (tmp_path / "analytics.duckdb").exists()


JWT = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")


def test_cli_serve_demo_never_prints_tokens_and_demo_tokens_prints_working_ones(tmp_path: Path) -> None:
    # the secret and issuer as compose passes them: the tokens must come from the same settings
    env = _env(
        tmp_path, FLIGHT_AUTH__JWT_SECRET="cli-test-secret-long-enough-for-hs256", FLIGHT_AUTH__ISSUER="https://demo"
    )
    proc = subprocess.Popen(
        [str(BIN), "serve", "--demo", "--rows", "5000"], env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    tokens: dict[str, str] = {}
    url = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and url is None:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if match := re.search(r"listening on (grpc://\S+)", line):
            url = match.group(1)
    try:
        assert url, "server did not start:\n" + "".join(lines)
        listed = _cli("demo-tokens", env=env)
        assert "for trying the demo only" in listed.stderr and "valid for 1 h" in listed.stderr
        for line in listed.stdout.splitlines():
            if match := re.fullmatch(r"(admin|analyst|viewer|service)\s+\(.*\): (\S+)", line):
                tokens[match.group(1)] = match.group(2)
        assert set(tokens) == {"admin", "analyst", "viewer", "service"}
        ok = _cli("query", "--url", url, "--token", tokens["viewer"], "--name", "domains.top", "--format", "json",
                  env=env)  # fmt: skip
        assert json.loads(ok.stdout)
        denied = _cli("query", "--url", url, "--token", tokens["viewer"], "SELECT 1", env=env, check=False)
        assert denied.returncode == 2 and "permission" in denied.stderr.lower()
        admin = _cli("query", "--url", url, "--token", tokens["admin"], "SELECT 7 AS n", "--format", "json", env=env)
        assert json.loads(admin.stdout) == [{"n": 7}]
        anonymous = _cli("query", "--url", url, "--name", "domains.top", env=env, check=False)
        assert anonymous.returncode == 2 and "unauthenticated" in anonymous.stderr.lower()
        bare = _cli("demo-tokens", "--role", "analyst", "--ttl-s", "120", env=env).stdout.strip()
        assert JWT.fullmatch(bare)
        mine = _cli("query", "--url", url, "--token", bare, "SELECT 8 AS n", "--format", "json", env=env)
        assert json.loads(mine.stdout) == [{"n": 8}]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, rest = proc.communicate(timeout=30)
    served = "".join(lines) + rest + out
    assert "demo data: 5,000 CDX records" in served and "listening on" in served
    assert not JWT.search(served), "serve printed a token"
    assert not any(token in served for token in tokens.values())


def test_cli_demo_tokens_needs_the_secret_and_is_in_help(tmp_path: Path) -> None:
    out = _cli("demo-tokens", env=_env(tmp_path), check=False)
    assert out.returncode == 1
    assert "FLIGHT_AUTH__JWT_SECRET" in out.stderr and not out.stdout
    assert "demo-tokens" in _cli("--help", env=_env(tmp_path)).stdout
    assert "FLIGHT_AUTH__ISSUED_TOKEN_TTL_S" in _cli("demo-tokens", "--help", env=_env(tmp_path)).stdout


def test_cli_serve_refuses_public_bind_without_auth(tmp_path: Path) -> None:
    out = _cli("serve", env=_env(tmp_path, FLIGHT_HOST="0.0.0.0"), check=False)
    assert out.returncode != 0
    assert "without authentication" in out.stderr


def test_cli_query_refuses_named_params_for_positional_sql(served: tuple[str, dict[str, str]]) -> None:
    url, env = served
    refused = _cli("query", "--url", url, "SELECT $1 AS d", "-p", "domain=x", env=env, check=False)
    assert refused.returncode != 0
    assert "'-p domain=x' names a parameter" in refused.stderr and "Traceback" not in refused.stderr
    as_text = _cli("query", "--url", url, "SELECT $1 AS d", "-p", '"domain=x"', "--format", "json", env=env)
    assert json.loads(as_text.stdout) == [{"d": "domain=x"}]
    not_a_name = _cli("query", "--url", url, "SELECT $1 AS d", "-p", "https://x.test/?a=b", "--format", "json", env=env)
    assert json.loads(not_a_name.stdout) == [{"d": "https://x.test/?a=b"}]
    named = _cli("query", "--url", url, "SELECT $domain AS d, $n + 1 AS n", "-p", "domain=x", "-p", "n=41",
                 "--format", "json", env=env)  # fmt: skip
    assert json.loads(named.stdout) == [{"d": "x", "n": 42}]


def test_cli_query_csv_writes_nested_and_json_columns_as_json_text(served: tuple[str, dict[str, str]]) -> None:
    url, env = served
    sql = """SELECT [1, 2] AS l, {'a': 1, 'b': 'x'} AS s, MAP {'k': 1} AS m, '{"k": [1]}'::JSON AS j, 7 AS n"""
    out = _cli("query", "--url", url, sql, "--format", "csv", env=env)
    [row] = list(csv.DictReader(io.StringIO(out.stdout)))
    assert json.loads(row["l"]) == [1, 2]
    assert json.loads(row["s"]) == {"a": 1, "b": "x"}
    assert json.loads(row["m"]) == [["k", 1]]
    assert json.loads(row["j"]) == {"k": [1]}
    assert row["n"] == "7"


@pytest.mark.postgres
def test_cli_query_csv_of_postgres_jsonb(hybrid_server: ServerHandle) -> None:
    env = _env(hybrid_server.data_dir)
    sql = "SELECT id, details FROM audit_logs ORDER BY id LIMIT 3"
    out = _cli("query", "--url", hybrid_server.location, sql, "--format", "csv", env=env)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 3
    expected = hybrid_server.get({"sql": sql, "engine": "postgres"}).column("details").to_pylist()
    assert [json.loads(r["details"]) for r in rows] == [json.loads(v) for v in expected]


def test_cli_query_max_rows_stops_the_server_after_them(server: ServerHandle, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flight_server.server")
    env = _env(server.data_dir)
    sql = "SELECT * FROM cdx_records, range(10) t(k)"  # 2,000,000 rows, too large to cache: it streams
    out = _cli("query", "--url", server.location, sql, "--max-rows", "5", "--format", "csv", env=env)
    assert len(list(csv.DictReader(io.StringIO(out.stdout)))) == 5
    assert "stopped at --max-rows 5" in out.stderr

    def streamed() -> list[dict[str, Any]]:
        fields = [getattr(record, "fields", {}) for record in caplog.records]
        return [f for f in fields if f.get("rpc") == "DoGet" and "rows" in f]

    [request] = wait_for(streamed, 60, "the server never finished the DoGet")
    assert request["status"] == "cancelled"  # the client went away: not all rows were sent
    assert request["rows"] < 2_000_000
    table = _cli("query", "--url", server.location, "SELECT * FROM cdx_records", env=env)
    assert "50 rows; stopped at --max-rows" in table.stdout
