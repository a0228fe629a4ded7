"""Time in the live loop: rows scheduled on the monotonic clock, stamped with wall time.

Used by the agent's main loop (``edge_agent.agent``) between the sampler and the pipeline.
A gateway's wall clock is not to be trusted: a Pi without a real-time clock boots with a stale
date and NTP later steps it by hours or days, in either direction. Waiting for "the next whole
second of wall time" would then stall scoring for as long as the step (backwards) or fire a
burst of catch-up rows (forwards). :class:`Ticker` waits on the monotonic clock instead and
only reads the wall clock to stamp each row, detecting a step as a jump of the offset between
the two clocks; the agent logs and counts it and starts a new data segment, so the windows on
either side of the step are never compared. Slow NTP slewing moves the offset by microseconds
per second and is not a step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# An offset jump larger than this between two looks at the clocks is a step, not jitter or slew.
CLOCK_STEP_MIN_S = 0.5


@dataclass(frozen=True)
class Clock:
    """The two clocks the agent reads; tests inject their own to step the wall clock."""

    wall: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic


SYSTEM_CLOCK = Clock()


class Ticker:
    """One row per ``period_s``, at whole multiples of the period in wall time.

    Call :meth:`check_step` on every turn of the loop, :meth:`due_in` to know how long to
    wait, and :meth:`take` when it is time, for the row's wall time stamp.
    """

    def __init__(self, period_s: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self.period_s = period_s
        self.clock = clock
        self._offset = clock.wall() - clock.mono()
        self._slot = self._first_slot_after(clock.wall())
        self.steps = 0

    def check_step(self) -> float | None:
        """The size of a wall-clock step since the last call (s, negative when the clock went
        back), or None. After a step the schedule continues from the new wall time."""
        mono, wall = self.clock.mono(), self.clock.wall()
        offset = wall - mono
        step = offset - self._offset
        self._offset = offset
        if abs(step) <= CLOCK_STEP_MIN_S:
            return None
        self.steps += 1
        self._slot = self._first_slot_after(wall)
        return step

    def due_in(self) -> float:
        """Seconds (monotonic) until the next row is due; <= 0 when it is."""
        return self._slot - self._offset - self.clock.mono()

    def take(self) -> float:
        """The wall time of the row due now; moves on one period. More than one period late
        (suspend, overload), the missed rows are skipped rather than fired in a burst."""
        now = self.clock.mono() + self._offset
        if now - self._slot > self.period_s:
            self._slot = math.floor(now / self.period_s) * self.period_s
        t = self._slot
        self._slot += self.period_s
        return t

    def _first_slot_after(self, wall: float) -> float:
        return math.ceil(wall / self.period_s) * self.period_s
