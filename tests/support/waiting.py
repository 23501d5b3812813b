"""Waiting in tests: one helper that polls a condition up to a deadline.

Tests never sleep a fixed time to let something happen; they wait for the thing
itself. The timeout is a generous bound for a stuck test to fail, not an expectation
of how long the wait takes, so a slow machine makes a test slower, never red.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.02


def wait_for(condition: Callable[[], T], timeout: float = 60.0, message: str = "condition not reached") -> T:
    """Poll `condition()` until it returns something truthy, and return that.

    Raises AssertionError with `message` (and the last value seen) when `timeout`
    seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (within {timeout:g} s; last seen: {value!r:.200})")
        time.sleep(POLL_S)
