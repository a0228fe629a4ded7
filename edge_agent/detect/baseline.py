"""A slowly adapting level for channels that drift in normal operation: after normalization,
before the windows.

A rig that warms up moves its temperatures by many training spreads over hours while nothing
is wrong; judged against the training level, every window after the first hour is an anomaly.
For the channels the trainer found trending in their history (``trainer.history_trend``),
each normalized sample is judged against a level that follows the channel slowly::

    r[t]      = z[t] - level[t]                      # what the windows and the models see
    level[t+1] = clip(level[t] + rate * clip(r[t], -max_step, max_step), -max_offset, max_offset)

``z`` is the sample in training units (mean removed, divided by scale), ``rate`` is
``1 - exp(-period / time_constant)``. A fresh level is the running mean of the first
``START_SAMPLES`` measured samples (a warm start, so an agent started on a machine that has
warmed up since training judges it from where it stands within half a minute, not after the
hour bounded steps would take; the first sample itself is judged against the training mean).
Three properties matter:

* **Causal and row-wise**: the level at ``t`` depends only on samples before ``t``, carried in
  one float per channel, so any split of the rows into pushes gives the same bits and the
  trainer sees the numbers the gateway computes.
* **Bounded speed**: one sample moves the level by at most ``rate * max_step`` training
  spreads, so a fault much faster than normal drift (a step, a leak over minutes) is not
  absorbed while it is being detected; a slow warm-up (hours) is.
* **Bounded reach**: the level never leaves ``±max_offset`` training spreads of the training
  mean, so a channel cannot adapt its way to any value: past that, the offset itself shows.

Imputed cells (held over a gap) are judged but do not move the level. Channels that did not
trend keep rate 0: their absolute level stays the reference, as a change of level there is a
fault, not weather.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_agent.config.strict import StrictModel
from edge_agent.kernels import jit

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

# A fresh level is the mean of the first this many measured samples: an agent started on a
# machine that warmed up since training judges it from where it stands within half a minute
# (bounded steps alone would take an hour to cover 8 spreads), and the noise of one sample does
# not become the reference. Short, so that what comes later meets the bounded steps.
START_SAMPLES = 30.0


def adapt_rate(period_s: float, time_constant_s: float) -> float:
    """The per-sample update weight of a level with this time constant."""
    return -math.expm1(-period_s / time_constant_s)


@jit
def follow_level(
    xn: F32,
    imputed: npt.NDArray[np.bool_],
    rate: F64,
    max_step: float,
    max_offset: float,
    level: F64,
    seen: F64,
) -> None:  # pragma: no cover - compiled
    """Subtract each adapting channel's level from ``xn`` (in place), updating ``level``.

    ``rate`` is 0 for channels that keep their training level; ``level`` and ``seen`` (C,)
    are the state carried from one call to the next: the level, and how many measured samples
    it has taken in. For the first ``START_SAMPLES`` the level is their running mean (a warm
    start: no long lag behind wherever the machine stands when the agent starts), then it
    moves by bounded steps.
    """
    m, c = xn.shape
    for j in range(c):
        a = rate[j]
        if a == 0.0:
            continue
        lv = level[j]
        n = seen[j]
        for t in range(m):
            z = np.float64(xn[t, j])
            if n == 0.0 and (imputed[t, j] or not np.isfinite(z)):
                continue  # nothing measured yet: judged against the training mean
            r = z - lv
            xn[t, j] = r
            if imputed[t, j] or not np.isfinite(r):
                continue
            n += 1.0
            if n <= START_SAMPLES:
                # Start: the running mean of the first samples, each capped at the level's
                # reach so one glitch cannot carry it far.
                lv += min(max(r, -max_offset), max_offset) / n
            else:
                lv += a * min(max(r, -max_step), max_step)
            lv = min(max(lv, -max_offset), max_offset)
        level[j] = lv
        seen[j] = n


class LevelBaseline(StrictModel):
    """Which channels judge their samples against a slowly adapting level, and how fast.

    Stored in the bundle manifest; absent means every channel keeps its training level."""

    channels: list[str] = Field(
        min_length=1, description="Channels whose level adapts (those that trended in training)"
    )
    time_constant_s: float = Field(gt=0, description="Time constant of the adapting level, s")
    max_step: float = Field(
        gt=0, description="Largest deviation (training spreads) one sample feeds into the level"
    )
    max_offset: float = Field(
        gt=0, description="Farthest the level may move from the training mean (training spreads)"
    )

    def rates(self, channel_names: list[str], period_s: float) -> F64:
        """Per channel of ``channel_names``: the update weight, 0 for channels that keep theirs."""
        unknown = sorted(set(self.channels) - set(channel_names))
        if unknown:
            raise ValueError(f"level baseline names channels the model does not have: {unknown}")
        a = adapt_rate(period_s, self.time_constant_s)
        return np.array([a if n in self.channels else 0.0 for n in channel_names], np.float64)


@dataclass(frozen=True)
class LevelState:
    """One machine's adapting levels: the kernel's fixed arguments and its carried state."""

    rate: F64  # (C,) 0 for channels that keep their training level
    max_step: float
    max_offset: float
    level: F64  # (C,) current level, training spreads from the training mean; mutated in place
    seen: F64  # (C,) measured samples taken in so far; mutated in place

    @classmethod
    def of(
        cls, baseline: LevelBaseline | None, channel_names: list[str], period_s: float
    ) -> LevelState:
        """Fresh state: no sample seen yet, every level at the training mean; all rates 0
        without a baseline."""
        c = len(channel_names)
        if baseline is None:
            return cls(np.zeros(c), 1.0, 1.0, np.zeros(c), np.zeros(c))
        rate = baseline.rates(channel_names, period_s)
        return cls(rate, baseline.max_step, baseline.max_offset, np.zeros(c), np.zeros(c))

    @property
    def active(self) -> bool:
        return bool(np.any(self.rate > 0))

    def args(self) -> tuple[F64, float, float, F64, F64, bool]:
        """The fused pipeline kernel's level arguments, in its order."""
        return self.rate, self.max_step, self.max_offset, self.level, self.seen, self.active

    def apply(self, xn: F32, imputed: npt.NDArray[np.bool_]) -> None:
        """Judge ``xn`` (normalized, (m, C), in place) against the levels and move them on."""
        if self.active:
            follow_level(
                xn, imputed, self.rate, self.max_step, self.max_offset, self.level, self.seen
            )
