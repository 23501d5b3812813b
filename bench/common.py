"""Shared parts of the benchmarks: data, server processes, sampling, statistics, results.

The server under test always runs in its own process (`flight-server serve`), so that
its RSS can be measured and the client does not share its GIL. Baselines that need
DuckDB in process open a copy of the database file, since the server locks the original.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pyarrow.flight as flight

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DB_NAME = "analytics.duckdb"
SEED = 42
_MARKER = "bench-data.json"


def log(message: str) -> None:
    """Progress on stderr, with a timestamp."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- statistics ------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# -- results ---------------------------------------------------------------------------


@dataclass
class Result:
    """One row of the results table, with the figures behind it."""

    benchmark: str
    title: str
    baseline: str
    candidate: str
    ratio: float | None
    ratio_text: str
    target: str
    met: bool | None
    repetitions: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import duckdb
    import pyarrow

    return {
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": model or platform.processor(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pyarrow": pyarrow.__version__,
        "duckdb": duckdb.__version__,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def fmt_rate(rows_per_s: float) -> str:
    return f"{rows_per_s / 1e6:.2f} M rows/s"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def write_results(
    results: Sequence[Result],
    meta: Mapping[str, Any],
    out_dir: Path = RESULTS_DIR,
    name: str = "core",
    render: Callable[[Sequence[Result], Mapping[str, Any]], str] | None = None,
) -> str:
    """Write `<name>.json` and `<name>.md` (rendered by `render`); return the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**meta, "results": [r.to_json() for r in results]}
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    markdown = (render or render_markdown)(results, meta)
    (out_dir / f"{name}.md").write_text(markdown)
    return markdown


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(results: Sequence[Result], meta: Mapping[str, Any]) -> str:
    machine = meta.get("machine", {})
    lines = [
        "# Chrono Flight core benchmarks",
        "",
        f"Run {meta.get('started', '')}, {meta.get('rows', 0):,} demo CDX rows, "
        f"mode {'quick' if meta.get('quick') else 'full'}, total {meta.get('duration_s', 0):.0f} s. "
        f"Machine: {machine.get('logical_cores')} logical cores ({machine.get('cpu_model', '?')}), "
        f"{machine.get('memory_gb')} GB RAM, load average at start {machine.get('load_avg_at_start')}, "
        f"at end {meta.get('load_avg_at_end')}. Baseline and candidate run side by side, interleaved; "
        "figures are medians over the repetitions, ratios are medians of the per-repetition ratios.",
        "",
        "| benchmark | baseline | candidate | ratio | target | met? | reps |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        met = "—" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            f"| {cell(r.benchmark + ' ' + r.title)} | {cell(r.baseline)} | {cell(r.candidate)} | "
            f"{cell(r.ratio_text)} | {cell(r.target)} | {met} | {r.repetitions} |"
        )
    lines += ["", "## Details", ""]
    for r in results:
        notes = r.details.get("notes")
        lines.append(f"- **{r.benchmark}** {r.title}: " + (notes if isinstance(notes, str) else ""))
        for key, value in r.details.items():
            if key != "notes":
                lines.append(f"  - {key}: {_compact(value)}")
    lines.append("")
    return "\n".join(lines)


def _compact(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
    return json.dumps(value, default=str) if not isinstance(value, str) else value


# -- data ------------------------------------------------------------------------------


def _fingerprint(rows: int) -> str:
    """What decides the data set: the rows, the seed, the generator and the DDL."""
    digest = hashlib.sha256(f"{rows}:{SEED}".encode())
    for path in (PROJECT_ROOT / "flight_server" / "demo" / "analytics.py", PROJECT_ROOT / "schemas" / "duckdb.sql"):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def server_command() -> list[str]:
    """The `flight-server` console script, or the module when the script is not installed."""
    script = Path(sys.executable).parent / "flight-server"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "flight_server.cli.main"]


def server_env(data_dir: Path, port: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a server process: ours, never the caller's FLIGHT_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIGHT_")}
    env |= {
        "FLIGHT_DATA_DIR": str(data_dir),
        "FLIGHT_PORT": str(port),
        "FLIGHT_HOST": "127.0.0.1",
        "FLIGHT_LOG_LEVEL": "WARNING",
        "FLIGHT_HEALTH_PORT": str(free_port()),
        "FLIGHT_METRICS_PORT": str(free_port()),
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    return env | dict(extra or {})


@dataclass
class BenchData:
    data_dir: Path  # the server's FLIGHT_DATA_DIR
    baseline_db: Path  # a copy of its database, for in-process and JSON baselines
    rows: int
    generated_s: float | None  # None when an existing data set was reused


def prepare_data(data_dir: Path, rows: int, fresh: bool = False) -> BenchData:
    """Fill `data_dir` with demo data (once; reused while the generator is unchanged)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    db = data_dir / DB_NAME
    copy_dir = data_dir.parent / f"{data_dir.name}.baseline"
    copy = copy_dir / DB_NAME
    marker = data_dir / _MARKER
    fingerprint = _fingerprint(rows)
    current = json.loads(marker.read_text()) if marker.exists() else {}
    generated: float | None = None
    if fresh or current.get("fingerprint") != fingerprint or not db.exists():
        if current:  # our own earlier data set: start from an empty file
            for path in (marker, db, data_dir / f"{DB_NAME}.wal"):
                path.unlink(missing_ok=True)
        log(f"generating {rows:,} demo rows in {data_dir} ...")
        started = time.perf_counter()
        done = subprocess.run(
            [*server_command(), "demo-data", "--rows", str(rows), "--seed", str(SEED)],
            env=server_env(data_dir, 0),
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace")[-2000:]
            raise RuntimeError(f"flight-server demo-data failed ({done.returncode}):\n{tail}")
        generated = time.perf_counter() - started
        marker.write_text(json.dumps({"fingerprint": fingerprint, "rows": rows, "seed": SEED}))
        log(f"demo data ready in {generated:.1f} s ({fmt_bytes(db.stat().st_size)})")
    stale = not copy.exists() or copy.stat().st_size != db.stat().st_size
    if stale or copy.stat().st_mtime < db.stat().st_mtime:
        copy_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(db, copy)
    return BenchData(data_dir, copy, rows, generated)


# -- processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A child process with a log file; stopped by its own pid only."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            list(argv), env=dict(env), cwd=PROJECT_ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.process = psutil.Process(self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (all its threads)."""
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=15)
        self._log.close()


class FlightServer(ServerProcess):
    """`flight-server serve` on a free port over `data_dir`."""

    def __init__(self, data_dir: Path, log_path: Path, extra_env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.location = f"grpc://127.0.0.1:{self.port}"
        env = server_env(data_dir, self.port, extra_env)
        super().__init__("flight-server", [*server_command(), "serve"], env, log_path)

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        return wait_flight_ready(self, self.location, timeout_s)


def wait_flight_ready(server: ServerProcess, location: str, timeout_s: float = 180.0) -> float:
    """Retry the `health` action until it answers; the seconds it took."""
    started = time.perf_counter()
    while True:
        server.check_alive()
        try:
            with flight.connect(location) as client:
                options = flight.FlightCallOptions(timeout=2.0)
                list(client.do_action(flight.Action("health", b""), options))
            return time.perf_counter() - started
        except flight.FlightError:
            if time.perf_counter() - started > timeout_s:
                server.stop()
                raise TimeoutError(f"{server.name} not ready after {timeout_s:.0f} s") from None
            time.sleep(0.1)


class RssSampler:
    """Samples a process's RSS every `interval_s` in a thread; keeps the peak."""

    def __init__(self, process: psutil.Process, interval_s: float = 0.01) -> None:
        self._process = process
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.start_rss = int(process.memory_info().rss)
        self.peak = self.start_rss
        self.samples = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, int(self._process.memory_info().rss))
                self.samples += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, int(self._process.memory_info().rss))

    @property
    def growth(self) -> int:
        return self.peak - self.start_rss


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """`with timed() as t: ...` then t[0] holds the seconds."""
    box: list[float] = []
    started = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - started)


@dataclass
class Plan:
    """How much to measure: repetitions and sizes of each benchmark."""

    b1_reps: int
    b2_reps: int
    b3_calls: int
    b3_reps: int
    b3_seconds: float
    b3_latency_cap_s: float
    b2_serializers: tuple[str, ...] = ("orjson", "polars", "pylist")
    b3_clients: int = 8

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(
                b1_reps=3,
                b2_reps=2,
                b3_calls=100,
                b3_reps=2,
                b3_seconds=3.0,
                b3_latency_cap_s=20.0,
                b2_serializers=("polars",),  # the fastest; the others only in full runs
            )
        return cls(b1_reps=5, b2_reps=3, b3_calls=300, b3_reps=3, b3_seconds=5.0, b3_latency_cap_s=90.0)


@dataclass
class BenchContext:
    data: BenchData
    server: FlightServer
    plan: Plan
    run_dir: Path  # logs and scratch files of this run
