"""Resource sampling: sizes, the memory trend over the RSS history, and the 80% warnings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flight_server.ops.resources import MIN_CPU_WINDOW_S, CpuMeter, ResourceMonitor, parse_size


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[ResourceMonitor]:
    monitor = ResourceMonitor(tmp_path, lambda: 900 * 1000**2, "1GB", interval_s=60)
    yield monitor
    monitor.close()


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4GB", 4 * 1000**3),
        ("1.5 GiB", int(1.5 * 1024**3)),
        ("512MB", 512 * 1000**2),
        ("100KiB", 102400),
        ("1000", 1000),
        ("lots", None),
    ],
)
def test_resources_parse_size(text: str, size: int | None) -> None:
    assert parse_size(text) == size


def test_resources_memory_trend_rising(monitor: ResourceMonitor) -> None:
    assert monitor.latest is not None
    start, base = monitor.latest.at, monitor.latest.rss_bytes
    for i in range(1, 25):  # two minutes of samples growing 1% of the start each
        monitor.record_rss(start + 5 * i, int(base * (1 + 0.01 * i)))
    trend = monitor.memory_trend()
    assert trend["rising"] and trend["slope_bytes_per_s"] > 0
    assert trend["growth_ratio"] == pytest.approx(0.24, abs=0.02)
    assert any("trending up" in w for w in monitor.warnings())


def test_resources_memory_trend_flat_or_short_is_not_rising(monitor: ResourceMonitor) -> None:
    assert monitor.latest is not None
    start, base = monitor.latest.at, monitor.latest.rss_bytes
    for i in range(1, 25):
        monitor.record_rss(start + 5 * i, base + (1000 if i % 2 else -1000))  # noise, no growth
    assert not monitor.memory_trend()["rising"]
    assert not any("trending up" in w for w in monitor.warnings())


def test_resources_memory_trend_needs_a_minute_of_history(tmp_path: Path) -> None:
    monitor = ResourceMonitor(tmp_path, lambda: None, "1GB", interval_s=60)
    try:
        assert monitor.latest is not None
        start, base = monitor.latest.at, monitor.latest.rss_bytes
        for i in range(1, 20):  # doubling, but within 19 seconds
            monitor.record_rss(start + i, base * (1 + i))
        assert not monitor.memory_trend()["rising"]
    finally:
        monitor.close()


def test_resources_warn_when_duckdb_memory_over_80_percent_of_its_limit(monitor: ResourceMonitor) -> None:
    warnings = monitor.warnings()
    assert any(w.startswith("DuckDB memory (of its limit) use is 90%") for w in warnings), warnings
    snapshot = monitor.snapshot()
    assert snapshot["duckdb_memory_limit_bytes"] == 1000**3
    assert snapshot["duckdb_memory_bytes"] == 900 * 1000**2


class _Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_resources_cpu_is_unknown_until_a_window_has_passed() -> None:
    clock = _Clock()
    meter = CpuMeter(clock=clock)
    assert meter.read() == (None, None)  # right after priming: nothing measured yet
    clock.now += MIN_CPU_WINDOW_S / 2
    assert meter.read() == (None, None)
    clock.now += MIN_CPU_WINDOW_S
    process, system = meter.read()
    assert process is not None and 0 <= process <= 1
    assert system is not None and 0 <= system <= 1
    clock.now += MIN_CPU_WINDOW_S / 10  # too soon again: the last figures, the window not restarted
    assert meter.read() == (process, system)


def test_resources_first_sample_reports_no_cpu_and_no_cpu_warning(tmp_path: Path) -> None:
    monitor = ResourceMonitor(tmp_path, lambda: None, "1GB", interval_s=600)
    try:
        assert monitor.latest is not None
        assert monitor.latest.cpu_ratio is None and monitor.latest.system_cpu_ratio is None
        snapshot = monitor.snapshot()
        assert snapshot["process_cpu_ratio"] is None and snapshot["system_cpu_ratio"] is None
        assert not [w for w in monitor.warnings() if "CPU" in w]
    finally:
        monitor.close()
