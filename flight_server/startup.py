"""What the operator must fix before anything starts, said in one line; and Ctrl-C while it starts.

`StartupError` carries a one-line message that names the problem and what to do; the
command line prints it and exits non-zero, without a traceback. The checks here are the
ones every command that opens the data directory shares:

- `prepare_data_dir`: the data directory is a directory (created when missing, but only
  inside a parent that exists: a mistyped path does not grow a new tree) and writable.
- `open_duckdb`: the DuckDB file, or the process holding its lock named when another
  server (or `demo-data`) has it open.
- `settings_problem`: a configuration error as `FLIGHT_...: what is wrong`.

`Interrupts` makes Ctrl-C (and SIGTERM) during a command observable and, around a commit,
deferrable: DuckDB turns the KeyboardInterrupt raised inside a query into
`RuntimeError("Query interrupted")`, so `requested` is what says an interrupt happened;
between `defer()` and `resume()` a signal is only recorded, so the commits in between
(PostgreSQL's, then DuckDB's) all happen or none does, and `resume()` then stops the
command with `CommittedInterrupt`.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb
    from pydantic import ValidationError

_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>\S+) \(PID (?P<pid>\d+)\)")


class StartupError(Exception):
    """A start-up failure the operator must fix; the message is one line saying what to do."""


class CommittedInterrupt(KeyboardInterrupt):
    """Ctrl-C arrived while data was being committed: the commit completed, then the command stopped."""


def prepare_data_dir(data_dir: Path) -> Path:
    """The data directory, resolved and ready for writing (see the module docstring)."""
    path = data_dir.expanduser().resolve()
    hint = "or set FLIGHT_DATA_DIR to another directory"
    if path.exists() and not path.is_dir():
        raise StartupError(f"the data directory {path} is a file, not a directory: move the file away, {hint}")
    if not path.exists():
        if not path.parent.is_dir():
            raise StartupError(f"the parent of the data directory {path} does not exist: create it, {hint}")
        try:
            path.mkdir()
        except FileExistsError:  # created meanwhile: checked below like any other
            pass
        except OSError as exc:
            raise StartupError(f"cannot create the data directory {path} ({exc.strerror}): {hint}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"the data directory {path} is not writable by this user: fix its permissions, {hint}")
    return path


def open_duckdb(path: Path, config: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
    """Open the server's DuckDB file; a lock held by another process is a `StartupError`."""
    import duckdb

    try:
        return duckdb.connect(str(path), config=config or {})
    except duckdb.IOException as exc:
        holder = _LOCK_HOLDER.search(str(exc))
        if holder is None:
            raise StartupError(f"cannot open the DuckDB database {path}: {str(exc).splitlines()[0]}") from None
        raise StartupError(
            f"the data directory {path.parent} is in use by another process (PID {holder['pid']}): "
            "stop that server (or demo-data) first, or give this one its own FLIGHT_DATA_DIR"
        ) from None


def settings_problem(exc: ValidationError) -> str:
    """One line naming each environment variable whose value was refused, and why."""
    problems = []
    for error in exc.errors():
        name = "FLIGHT_" + "__".join(str(part).upper() for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{name}: {message} (got {error.get('input')!r:.80})")
    return "invalid setting " + "; ".join(problems)


class Interrupts:
    """SIGINT and SIGTERM during a command: recorded, raised at once unless deferred."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.committed = False  # the command has committed data: an interrupt now rolls nothing back
        self._deferred = False

    def install(self) -> None:
        """Take over both signals (main thread only); `flight-server serve` replaces them once it serves."""
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if not self._deferred:
            raise KeyboardInterrupt

    def defer(self) -> None:
        """From now on a signal is only recorded (a commit is about to run)."""
        self._deferred = True

    def resume(self, *, stop: bool = True) -> None:
        """Signals raise again; with `stop`, one recorded meanwhile stops the command now."""
        deferred, self._deferred = self._deferred, False
        self.committed = self.committed or (stop and deferred)
        if stop and deferred and self.requested:
            raise CommittedInterrupt
