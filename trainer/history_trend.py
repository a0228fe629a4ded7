"""A robust estimate of how far one channel drifted over a training history.

Used by :mod:`trainer.history_check` before ``trainer fit`` trains, to tell a slow drift (a rig
warming up, a filter clogging) from the cycles and noise a model is meant to learn. numpy only.

The slope is Theil-Sen (the median of all pairwise slopes) over block medians of the samples:
block medians shrug off spikes and stuck stretches inside a block, and the median of slopes
shrugs off whole blocks that are odd (up to about 29 % of them), so neither a fault nor a stop
in the history moves it much. Its drift (slope x span) is compared with the spread of the
samples around the fitted line (1.4826 x MAD of the residuals, the normal-equivalent standard
deviation): everything the trend does not explain, noise, load cycles and daily swings
included. A channel that swings 8 °C every day and ends the day a few degrees above where it
began is cycling, not drifting, and this ratio stays near 1; against the within-window
standard deviation (0.1 °C on the plant simulator's oil temperature) the same day would look
like a trend sixty times its spread.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import numpy.typing as npt

from edge_agent.config.strict import StrictModel

# Block medians the Theil-Sen slope is taken over: 256 blocks give 32,640 pairwise slopes,
# milliseconds per channel whatever the history's length.
MAX_TREND_BLOCKS = 256
# 1.4826 x MAD estimates the standard deviation of normally distributed values.
MAD_TO_SD = 1.4826
# Fewer finite samples than this say nothing about a trend.
MIN_TREND_SAMPLES = 8
# Lower bound of the spread relative to the channel's level, so a noise-free channel gives a
# large but finite ratio (JSON has no infinity).
SPREAD_FLOOR_RELATIVE = 1e-9


class Trend(StrictModel):
    """A channel's drift over the history and its spread around that drift (in its unit)."""

    drift: float  # fitted change from the first sample's time to the last one's
    spread: float  # robust standard deviation of the samples around the fitted line
    level: float  # median of the samples
    ratio: float  # |drift| in units of the spread


def robust_trend(times: npt.NDArray[np.float64], values: npt.NDArray[np.float64]) -> Trend | None:
    """The trend of ``values`` (NaN = missing) over ``times`` in s; None with too few samples."""
    ok = np.isfinite(values)
    if int(ok.sum()) < MIN_TREND_SAMPLES:
        return None
    order = np.argsort(times[ok], kind="stable")
    t = times[ok][order] - times[ok][order][0]
    x = values[ok][order]
    edges = np.linspace(0, x.size, min(x.size, MAX_TREND_BLOCKS) + 1).astype(np.intp)
    bt = np.array([np.median(t[a:b]) for a, b in pairwise(edges)])
    bx = np.array([np.median(x[a:b]) for a, b in pairwise(edges)])
    i, j = np.triu_indices(bx.size, 1)
    dt = bt[j] - bt[i]
    apart = dt > 0
    if not apart.any():
        return None  # every sample at one instant: no time to drift over
    slope = float(np.median((bx[j] - bx[i])[apart] / dt[apart]))
    intercept = float(np.median(bx - slope * bt))
    resid = x - (intercept + slope * t)
    spread = MAD_TO_SD * float(np.median(np.abs(resid - np.median(resid))))
    drift = slope * float(t[-1])
    level = float(np.median(x))
    floor = SPREAD_FLOOR_RELATIVE * max(1.0, abs(level))
    return Trend(drift=drift, spread=spread, level=level, ratio=abs(drift) / max(spread, floor))
