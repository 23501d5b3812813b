"""Start-up failures a user meets, run as the real `flight-server` command: one line, never a traceback.

Each case asserts a non-zero exit code, a last line on stderr that names the problem and
what to do, and no 'Traceback'. Ctrl-C runs with stderr on a pseudo-terminal, as in a
shell, so the progress display is live and the signal lands while data is being written;
the data left behind must then be all of the old or all of the new, as the message says.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pytest

from flight_server.app import App
from flight_server.settings import CacheSettings, DuckDBSettings, Settings, packaged_schemas
from flight_server.startup import StartupError

from support.processes import BIN, ServerProcess
from support.servers import create_database, drop_database, pg_settings, serve_env
from support.sync import pg_exec

pytestmark = pytest.mark.postgres

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str, env: dict[str, str], prefix: tuple[str, ...] = ()) -> tuple[int, str]:
    result = subprocess.run([*prefix, str(BIN), *args], env=env, capture_output=True, text=True, timeout=120)
    return result.returncode, result.stderr


def _last_line(stderr: str) -> str:
    lines = [line.strip() for line in ANSI.sub("", stderr).replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _assert_one_line_failure(code: int, stderr: str, pattern: str) -> None:
    assert code not in (0, None), stderr
    assert "Traceback" not in stderr, stderr
    assert re.search(pattern, _last_line(stderr)), stderr[-2000:]


def _cdx_rows(data_dir: Path) -> int:
    with duckdb.connect(str(data_dir / "analytics.duckdb"), read_only=True) as con:
        return int(con.sql("SELECT count(*) FROM base.cdx_records").fetchall()[0][0])


# -- configuration and the data directory ------------------------------------------------


def test_startup_redis_url_without_a_scheme_is_refused_at_settings_validation(tmp_path: Path) -> None:
    code, stderr = _cli("serve", env=serve_env(tmp_path, FLIGHT_REDIS__URL="127.0.0.1:6379"))
    _assert_one_line_failure(code, stderr, r"FLIGHT_REDIS__URL: must be a Redis URL such as redis://127\.0\.0\.1:6379")
    assert not (tmp_path / "analytics.duckdb").exists()  # refused before anything opened


@pytest.mark.parametrize("command", ["serve", "demo-data"])
@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("is a file", r"is a file, not a directory: move the file away, or set FLIGHT_DATA_DIR"),
        ("has no parent", r"parent of the data directory .* does not exist: create it, or set FLIGHT_DATA_DIR"),
        ("not writable", r"is not writable by this user: fix its permissions, or set FLIGHT_DATA_DIR"),
    ],
)
def test_startup_unusable_data_directory_is_one_line(tmp_path: Path, command: str, case: str, pattern: str) -> None:
    prefix: tuple[str, ...] = ()
    if case == "is a file":
        data_dir = tmp_path / "data"
        data_dir.write_text("not a directory")
    elif case == "has no parent":
        data_dir = tmp_path / "missing" / "data"
    else:
        data_dir = tmp_path / "data"
        data_dir.mkdir(mode=0o555)
        if os.geteuid() == 0:  # root writes anywhere: run it without the capabilities that allow that
            prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--")
    code, stderr = _cli(command, "--rows", "1000", env=serve_env(data_dir), prefix=prefix)
    _assert_one_line_failure(code, stderr, rf"^{command}: .*{pattern}")


def test_startup_second_server_on_the_same_data_directory_is_named(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path)
    try:
        for command in ("serve", "demo-data"):
            code, stderr = _cli(command, env=serve_env(tmp_path))
            _assert_one_line_failure(
                code,
                stderr,
                rf"in use by another process \(PID {first.proc.pid}\): stop that server .* FLIGHT_DATA_DIR",
            )
    finally:
        first.stop()
    assert first.proc.returncode == 0  # and the first server never noticed


def test_startup_demo_data_with_postgres_unreachable_changes_nothing(tmp_path: Path) -> None:
    env = serve_env(tmp_path)
    code, stderr = _cli("demo-data", "--rows", "3000", env=env)
    assert code == 0, stderr
    unreachable = serve_env(tmp_path, FLIGHT_POSTGRES__URI=f"postgresql://postgres@127.0.0.1:{_closed_port()}/chrono")
    code, stderr = _cli("demo-data", "--rows", "5000", "--seed", "7", env=unreachable)
    _assert_one_line_failure(code, stderr, r"cannot reach PostgreSQL .*: start it and check FLIGHT_POSTGRES__URI")
    assert _cdx_rows(tmp_path) == 3000  # checked before anything changed


def test_startup_broken_catalogue_is_one_line(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(packaged_schemas(), schemas)
    (schemas / "catalog.toml").write_text(
        (schemas / "catalog.toml").read_text().replace("FROM cdx_records", "FROM cdx")
    )
    code, stderr = _cli("serve", env=serve_env(tmp_path / "data", FLIGHT_SCHEMAS_DIR=str(schemas)))
    _assert_one_line_failure(code, stderr, r"catalogue .* is unusable: .*cdx.*; fix it, or point FLIGHT_SCHEMAS_DIR")


# -- a failed start-up unwinds -------------------------------------------------------------


def _unlocked(path: Path) -> bool:
    """True when another process can open the DuckDB file (its lock was released)."""
    probe = f"import duckdb; duckdb.connect({str(path)!r}).close()"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60).returncode == 0


def test_startup_failure_closes_duckdb_and_stops_its_threads(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(packaged_schemas(), schemas)
    catalog = schemas / "catalog.toml"
    catalog.write_text(catalog.read_text().replace("SELECT a.user_id, a.action, a.timestamp", "SELECT a.nope"))
    settings = Settings(
        data_dir=tmp_path / "data",
        schemas_dir=schemas,
        duckdb=DuckDBSettings(threads=2, memory_limit="1GB"),
        postgres=pg_settings("chrono_absent", port=_closed_port()),  # pool, set-up and audit writer start
        cache=CacheSettings(warm_top_n=0),
    )
    before = set(threading.enumerate())
    with pytest.raises(StartupError, match=r"system\.user_activity does not plan"):
        App(settings)
    assert {t.name for t in set(threading.enumerate()) - before if t.is_alive()} == set()
    assert _unlocked(settings.duckdb_path)

    def interrupted(con: duckdb.DuckDBPyConnection) -> None:
        raise KeyboardInterrupt("ctrl-c while the demo data is written")  # in-process

    with pytest.raises(KeyboardInterrupt, match="ctrl-c while the demo data is written"):
        App(settings.model_copy(update={"schemas_dir": packaged_schemas()}), prepare=interrupted)
    assert {t.name for t in set(threading.enumerate()) - before if t.is_alive()} == set()
    assert _unlocked(settings.duckdb_path)


# -- Ctrl-C ----------------------------------------------------------------------------------


def _interrupt_at(args: list[str], env: dict[str, str], marker: str) -> tuple[int, str]:
    """Run the command with stderr on a terminal; SIGINT once `marker` is drawn; its exit code and output."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [str(BIN), *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal
    )
    os.close(terminal)
    output, sent = b"", False
    try:
        while select.select([controller], [], [], 120)[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the command closed the terminal: it has ended
                break
            if not chunk:
                break
            output += chunk
            if not sent and marker.encode() in output:
                proc.send_signal(signal.SIGINT)
                sent = True
    finally:
        os.close(controller)
        proc.wait(timeout=60)
    assert sent, f"{marker!r} never appeared:\n{output.decode(errors='replace')[-2000:]}"
    return proc.returncode, ANSI.sub("", output.decode(errors="replace"))


def test_startup_ctrl_c_during_demo_data_keeps_the_previous_data(tmp_path: Path) -> None:
    env = serve_env(tmp_path)
    code, stderr = _cli("demo-data", "--rows", "4000", env=env)
    assert code == 0, stderr
    # two chunks of captures: the first one drawn, the signal lands in the second
    code, output = _interrupt_at(["demo-data", "--rows", "1500000", "--seed", "7"], env, "cdx_records")
    assert code == 130
    _assert_one_line_failure(code, output, r"^demo-data: interrupted: the demo data was not changed")
    assert _cdx_rows(tmp_path) == 4000


def test_startup_ctrl_c_in_serve_while_demo_data_commits_leaves_all_or_nothing(tmp_path: Path) -> None:
    database = create_database()
    owner = pg_settings(database).uri
    assert owner is not None
    rows = 400_000
    try:
        env = serve_env(tmp_path, FLIGHT_POSTGRES__URI=owner, FLIGHT_SYNC__ENABLED="false")
        # the last step drawn before the PostgreSQL rows load and both stores commit
        code, output = _interrupt_at(["serve", "--demo", "--rows", str(rows)], env, "performance_metrics")
        _assert_one_line_failure(code, output, r"^serve: interrupted during start-up: the server did not start")
        assert code == 130
        complete = "the demo data it generated is complete" in _last_line(output)
        assert _cdx_rows(tmp_path) == (rows if complete else 0)
        projects = pg_exec(owner, "SELECT count(*) FROM projects")[0][0]
        assert projects == (12 if complete else 0)  # PostgreSQL committed exactly when DuckDB did
    finally:
        drop_database(database)
