"""The one-line message every client sees: first line only, paths masked, length bounded."""

from __future__ import annotations

import pytest

from flight_server.errors import one_line


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("unknown table '/srv/data/cdx_records/partition_year=2008/part-0.parquet'", "unknown table '<path>'"),
        ("cannot open /var/lib/chrono/data/chrono.duckdb: locked", "cannot open <path>: locked"),
        ("first line\nTraceback (most recent call last):", "first line"),
        ("redis://127.0.0.1:6379/0 refused", "redis://127.0.0.1:6379/0 refused"),
        ("", "error"),
    ],
)
def test_errors_one_line_masks_paths_and_keeps_the_first_line(message: str, expected: str) -> None:
    assert one_line(message) == expected


def test_errors_one_line_bounds_the_length() -> None:
    line = one_line("x" * 1000, limit=50)
    assert len(line) == 50
    assert line.endswith("...")
