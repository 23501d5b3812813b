"""Resource use of the server: CPU, memory, disk and DuckDB memory, sampled in the background.

A `ResourceMonitor` samples every few seconds and keeps a short history of the process's
resident memory (RSS), so that `health` can say whether memory is trending up (the
least-squares slope over the history) and warn when any resource is over 80% used.

CPU figures are shares of the time between two readings, and psutil counts CPU time
in scheduler ticks: a reading over a few microseconds (the first sample, right after
start-up) is either 0 or thousands of percent. `CpuMeter` therefore answers None
(unknown) until `MIN_CPU_WINDOW_S` has passed since it was primed, and an unknown
figure never raises a warning.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

HIGH_USE = 0.8  # the architecture document's "resource exhaustion" threshold
HISTORY = 360  # samples of RSS kept: 30 minutes at the default 5 s
TREND_MIN_SAMPLES = 12
TREND_MIN_SPAN_S = 60.0
TREND_GROWTH = 0.10  # memory "trends up" when the fitted line rose by this share over the history
MIN_CPU_WINDOW_S = 0.5  # shortest time between two CPU readings that measures anything

_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
_SIZE = re.compile(r"^\s*([0-9.]+)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int | None:
    """Bytes in a DuckDB size such as `4GB`, `1.5 GiB` or `512MB`; None when it is not one."""
    match = _SIZE.match(text)
    if not match:
        return None
    number, unit, binary = match.groups()
    scale = 1024 ** "kmgt".index(unit.lower()) * 1024 if unit and binary else _UNITS[unit.lower()]
    return int(float(number) * scale)


@dataclass
class Sample:
    at: float  # time.monotonic()
    rss_bytes: int
    cpu_ratio: float | None  # of the process, as a share of all cores; None until measurable
    system_cpu_ratio: float | None
    system_memory_ratio: float
    disk_ratio: float  # of the data directory's file system
    duckdb_memory_bytes: int | None


class CpuMeter:
    """CPU use of this process (a share of all cores) and of the machine between readings.

    `read` returns the figures over the time since the previous measuring read; until
    `min_window_s` has passed since then it returns the previous figures (None before
    the first), without restarting the window. Figures are clamped to [0, 1].
    """

    def __init__(self, min_window_s: float = MIN_CPU_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._min_window_s = min_window_s
        self._clock = clock
        self._process = psutil.Process()
        self._cores = psutil.cpu_count() or 1
        self._process.cpu_percent(None)  # the first calls only start the measurement
        psutil.cpu_percent(None)
        self._since = clock()
        self._last: tuple[float | None, float | None] = (None, None)

    def read(self) -> tuple[float | None, float | None]:
        """(process, system) CPU ratios; None while nothing has been measured yet."""
        now = self._clock()
        if now - self._since < self._min_window_s:
            return self._last
        process = self._process.cpu_percent(None) / 100.0 / self._cores
        system = psutil.cpu_percent(None) / 100.0
        self._since = now
        self._last = (min(max(process, 0.0), 1.0), min(max(system, 0.0), 1.0))
        return self._last


class ResourceMonitor:
    """Samples resource use every `interval_s` from a daemon thread."""

    def __init__(
        self,
        data_dir: Path,
        duckdb_memory: Callable[[], int | None],
        duckdb_limit: str,
        interval_s: float = 5.0,
    ) -> None:
        self._data_dir = data_dir
        self._duckdb_memory = duckdb_memory
        self.duckdb_limit_bytes = parse_size(duckdb_limit)
        self._interval_s = interval_s
        self._process = psutil.Process()
        self.cpu = CpuMeter()
        self._lock = threading.Lock()
        self._rss: deque[tuple[float, int]] = deque(maxlen=HISTORY)
        self.latest: Sample | None = None
        self._closed = threading.Event()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="resource-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.wait(self._interval_s):
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - never let monitoring take anything down
                logger.warning("resource sampling failed", extra={"fields": {"error": str(exc).splitlines()[0]}})

    def sample(self) -> Sample:
        try:
            duckdb_memory = self._duckdb_memory()
        except Exception:  # noqa: BLE001 - the engine is closing or busy: report it as unknown
            duckdb_memory = None
        cpu, system_cpu = self.cpu.read()
        sample = Sample(
            at=time.monotonic(),
            rss_bytes=self._process.memory_info().rss,
            cpu_ratio=cpu,
            system_cpu_ratio=system_cpu,
            system_memory_ratio=psutil.virtual_memory().percent / 100.0,
            disk_ratio=psutil.disk_usage(str(self._data_dir)).percent / 100.0,
            duckdb_memory_bytes=duckdb_memory,
        )
        self.record_rss(sample.at, sample.rss_bytes)
        self.latest = sample
        return sample

    def record_rss(self, at: float, rss_bytes: int) -> None:
        with self._lock:
            self._rss.append((at, rss_bytes))

    def memory_trend(self) -> dict[str, Any]:
        """The slope of RSS over the history, and whether memory is trending up."""
        with self._lock:
            points = list(self._rss)
        out: dict[str, Any] = {
            "samples": len(points),
            "window_s": round(points[-1][0] - points[0][0], 1) if points else 0.0,
            "slope_bytes_per_s": None,
            "growth_ratio": None,
            "rising": False,
        }
        if len(points) < 2 or out["window_s"] <= 0:
            return out
        t0 = points[0][0]
        xs = [t - t0 for t, _ in points]
        ys = [float(rss) for _, rss in points]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mean_x) ** 2 for x in xs)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
        start = mean_y - slope * mean_x
        growth = slope * xs[-1] / start if start > 0 else 0.0
        out["slope_bytes_per_s"] = round(slope, 1)
        out["growth_ratio"] = round(growth, 4)
        out["rising"] = len(points) >= TREND_MIN_SAMPLES and xs[-1] >= TREND_MIN_SPAN_S and growth >= TREND_GROWTH
        return out

    def duckdb_memory_ratio(self, sample: Sample) -> float | None:
        if sample.duckdb_memory_bytes is None or not self.duckdb_limit_bytes:
            return None
        return sample.duckdb_memory_bytes / self.duckdb_limit_bytes

    def warnings(self) -> list[str]:
        """Resources over 80% used, and memory trending up."""
        sample = self.latest
        if sample is None:
            return []
        out = []
        usage = {
            "system memory": sample.system_memory_ratio,
            "process CPU": sample.cpu_ratio,
            "system CPU": sample.system_cpu_ratio,
            "data directory disk": sample.disk_ratio,
            "DuckDB memory (of its limit)": self.duckdb_memory_ratio(sample),
        }
        for name, ratio in usage.items():
            if ratio is not None and ratio > HIGH_USE:
                out.append(f"{name} use is {ratio:.0%} (over {HIGH_USE:.0%})")
        trend = self.memory_trend()
        if trend["rising"]:
            out.append(
                f"memory is trending up: RSS grew {trend['growth_ratio']:.0%} over the last {trend['window_s']:.0f} s"
            )
        return out

    def snapshot(self) -> dict[str, Any]:
        sample = self.latest or self.sample()
        return {
            "rss_bytes": sample.rss_bytes,
            "process_cpu_ratio": None if sample.cpu_ratio is None else round(sample.cpu_ratio, 4),
            "system_cpu_ratio": None if sample.system_cpu_ratio is None else round(sample.system_cpu_ratio, 4),
            "system_memory_ratio": round(sample.system_memory_ratio, 4),
            "data_disk_ratio": round(sample.disk_ratio, 4),
            "duckdb_memory_bytes": sample.duckdb_memory_bytes,
            "duckdb_memory_limit_bytes": self.duckdb_limit_bytes,
            "sampled_s_ago": round(time.monotonic() - sample.at, 3),
            "trend": self.memory_trend(),
        }

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
