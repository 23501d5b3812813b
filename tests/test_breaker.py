"""The circuit breaker's state machine, step by step, on a clock the test moves by hand.

The breaker reads `time.monotonic`; the test replaces the module's `time` with a clock
of its own, so that "the open interval passes" is one assignment, not a sleep.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flight_server.engines import breaker as breaker_module
from flight_server.engines.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(breaker_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


# each step: (event, state after it, whether a call may go through then)
STEPS_TRIP_AND_RECOVER = [
    ("failure", CLOSED, True),
    ("failure", CLOSED, True),
    ("failure", OPEN, False),  # the third failure in a row opens it
    ("wait 4.9", OPEN, False),
    ("wait 0.1", HALF_OPEN, True),  # the open interval has passed: one probe goes through
    ("success", CLOSED, True),
]

STEPS_FAILED_PROBE_DOUBLES = [
    ("failure", CLOSED, True),
    ("failure", CLOSED, True),
    ("failure", OPEN, False),
    ("wait 5", HALF_OPEN, True),
    ("failure", OPEN, False),  # the probe failed: open again, for twice as long
    ("wait 5", OPEN, False),
    ("wait 5", HALF_OPEN, True),
    ("success", CLOSED, True),
    ("failure", CLOSED, True),  # closed again: the count of failures starts over
]

STEPS_SUCCESS_RESETS_THE_COUNT = [
    ("failure", CLOSED, True),
    ("failure", CLOSED, True),
    ("success", CLOSED, True),
    ("failure", CLOSED, True),
    ("failure", CLOSED, True),
    ("failure", OPEN, False),
]

STEPS_OPEN_NOW = [
    ("open_now", OPEN, False),
    ("wait 5", HALF_OPEN, True),
    ("success", CLOSED, True),
]


@pytest.mark.parametrize(
    "steps",
    [STEPS_TRIP_AND_RECOVER, STEPS_FAILED_PROBE_DOUBLES, STEPS_SUCCESS_RESETS_THE_COUNT, STEPS_OPEN_NOW],
    ids=["trip-and-recover", "failed-probe-doubles", "success-resets-count", "open-now"],
)
def test_breaker_state_machine(clock: Clock, steps: list[tuple[str, str, bool]]) -> None:
    breaker = CircuitBreaker("dep", failures=3, open_s=5.0, max_open_s=60.0)
    assert breaker.state == CLOSED
    for i, (event, state, allowed) in enumerate(steps):
        if event.startswith("wait "):
            clock.now += float(event.split()[1])
        else:
            getattr(breaker, event)()
        assert breaker.state == state, f"step {i} ({event})"
        # `allow()` in half-open state claims the one probe; ask a fresh question each step
        assert (breaker.retry_in_s() == 0.0) is allowed, f"step {i} ({event})"


def test_breaker_half_open_lets_one_probe_through(clock: Clock) -> None:
    breaker = CircuitBreaker("dep", failures=1, open_s=5.0)
    breaker.failure()
    assert not breaker.allow()
    clock.now += 5.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # no second call while the probe is out
    breaker.success()
    assert breaker.allow() and breaker.allow()


def test_breaker_open_interval_is_capped(clock: Clock) -> None:
    breaker = CircuitBreaker("dep", failures=1, open_s=5.0, max_open_s=8.0)
    breaker.failure()
    for _ in range(3):  # 5 -> 8 (capped, not 10) -> 8
        clock.now += 10.0
        assert breaker.state == HALF_OPEN
        breaker.failure()
    assert breaker.retry_in_s() == pytest.approx(8.0)


def test_breaker_snapshot_reports_state_failures_and_trips(clock: Clock) -> None:
    breaker = CircuitBreaker("dep", failures=2, open_s=5.0)
    breaker.failure()
    breaker.failure()
    clock.now += 1.5
    assert breaker.snapshot() == {"state": OPEN, "consecutive_failures": 2, "trips": 1, "retry_in_s": 3.5}
