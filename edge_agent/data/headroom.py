"""How far past the training history's largest value a learned data-quality limit sits.

Shared by the limits ``trainer fit`` learns from a history's largest value per channel: the
noise level (:mod:`edge_agent.data.roughness`) and the step between readings
(:mod:`edge_agent.data.jumps`). The headroom is ``HEADROOM`` times that value, doubled for a
history of at most ``SHORT_HISTORY_ROWS`` rows and shrinking towards ``HEADROOM`` as the history
grows: a short history's largest value has seen little of normal, the same reasoning as the
threshold's margin. Chosen on the plant simulator's noise bursts (two days of history: 4 of 5
flagged at 1.25, 3 of 5 at 1.5, no normal row either way) and checked on SKAB's 400-row
histories (``bench/results/skab.json``).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

HEADROOM = 1.25
SHORT_HISTORY_ROWS = 1000


def learned_limit(largest: float, rows: int) -> float | None:
    """The limit over a history of ``rows`` rows whose largest value was ``largest``; None
    for a channel that never moved (or no history)."""
    if rows <= 0 or not math.isfinite(largest) or largest <= 0.0:
        return None
    return float(largest * HEADROOM * (1.0 + min(1.0, SHORT_HISTORY_ROWS / rows)))


def history_rows(values: npt.NDArray[np.float64]) -> int:
    """Rows of a training history (N, C) that count: those not set to NaN throughout."""
    return int(np.count_nonzero(~np.isnan(values).all(axis=1)))


def column_limits(measures: npt.NDArray[np.float64], rows: int) -> list[float | None]:
    """:func:`learned_limit` of each column's largest measure (M, C) over a history of
    ``rows`` rows; NaN measures (next to an ignored row) do not count."""
    largest = [float(np.nanmax(c)) if np.isfinite(c).any() else np.nan for c in measures.T]
    return [learned_limit(v, rows) for v in largest]
