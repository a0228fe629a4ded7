"""The live loop's clock: ticks on the monotonic clock, rows stamped with wall time, and
wall-clock steps (NTP on a Pi without RTC) detected instead of stalling or bursting."""

from __future__ import annotations

import itertools

import pytest

from edge_agent.clock import CLOCK_STEP_MIN_S, Clock, Ticker

PERIOD_S = 1.0
HOUR_S = 3600.0


class SteppableClock:
    """A wall clock that can be stepped, over a monotonic clock the test advances."""

    def __init__(self, wall0: float = 1_700_000_000.25) -> None:
        self.mono_s = 100.0
        self.offset = wall0 - self.mono_s

    def clock(self) -> Clock:
        return Clock(wall=lambda: self.mono_s + self.offset, mono=lambda: self.mono_s)


def run_for(ticker: Ticker, c: SteppableClock, seconds: float, dt: float = 0.05) -> list[float]:
    """The loop as the agent runs it; returns the row stamps it produced."""
    rows: list[float] = []
    steps = int(seconds / dt)
    for _ in range(steps):
        c.mono_s += dt
        ticker.check_step()
        if ticker.due_in() <= 0:
            rows.append(ticker.take())
    return rows


def test_rows_fall_on_whole_periods_of_wall_time() -> None:
    c = SteppableClock()
    rows = run_for(Ticker(PERIOD_S, c.clock()), c, 5.0)
    assert len(rows) == 5
    assert all(t == int(t) for t in rows)
    assert [b - a for a, b in itertools.pairwise(rows)] == [PERIOD_S] * 4


@pytest.mark.parametrize("step", [-HOUR_S, -2.0, HOUR_S, 2.0])
def test_a_step_is_detected_and_rows_keep_coming_at_the_same_pace(step: float) -> None:
    """Backwards, the old schedule would stall for the size of the step; forwards, it would
    fire a burst. Either way rows keep one per period, stamped with the new time."""
    c = SteppableClock()
    ticker = Ticker(PERIOD_S, c.clock())
    before = run_for(ticker, c, 3.0)
    c.offset += step
    seen = ticker.check_step()
    assert seen == pytest.approx(step)
    assert ticker.steps == 1
    after = run_for(ticker, c, 5.0)
    assert 4 <= len(after) <= 6
    assert after[0] == pytest.approx(before[-1] + step, abs=2 * PERIOD_S)
    assert [b - a for a, b in itertools.pairwise(after)] == [PERIOD_S] * (len(after) - 1)


def test_slewing_and_jitter_are_not_steps() -> None:
    c = SteppableClock()
    ticker = Ticker(PERIOD_S, c.clock())
    for _ in range(200):  # NTP slews at most 500 ppm
        c.mono_s += 0.1
        c.offset += 0.1 * 500e-6
        assert ticker.check_step() is None
    c.offset += CLOCK_STEP_MIN_S * 0.9
    assert ticker.check_step() is None
    assert ticker.steps == 0


def test_a_late_loop_skips_missed_rows_instead_of_bursting() -> None:
    c = SteppableClock()
    ticker = Ticker(PERIOD_S, c.clock())
    run_for(ticker, c, 2.0)
    c.mono_s += 10.0  # suspended or overloaded for 10 s
    assert ticker.check_step() is None  # both clocks moved: no step
    rows = run_for(ticker, c, 1.0)
    assert len(rows) <= 2
