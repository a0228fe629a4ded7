"""Spikes: a reading that left the one before and came back at the next, further than normal.

The jump limit (:mod:`edge_agent.data.jumps`) cannot see a glitch on a channel whose normal
steps are large: the compressor's motor current moves 91 A when it loads, so its jump limit is
114 A and a 42 A one-sample spike passes. But a load step does not come back at the next
sample, and a glitch does. The excursion of reading t, when the step into it and the step out
of it have opposite signs, is the smaller of the two; in normal running it is noise-sized on
every channel (5.9 A on that current), so a limit on it finds glitches that a step limit
cannot.

* ``trainer fit`` measures each channel's largest excursion on normal rows and records a limit
  over it in the manifest (``ChannelSpec.spike_above``), with the same headroom as the other
  learned limits (:func:`edge_agent.data.headroom.learned_limit`) and, as for the jump limit,
  none from a history under :data:`edge_agent.data.jumps.MIN_HISTORY_ROWS` rows;
* the agent's data quality reports a spike as a ``sensor_fault`` with reason ``spike``, one
  sample late (the way back is what makes it a spike), its ``start`` the spike's own sample;
  the reading was scored, as a noisy one or a jump is;
* the offline pipeline marks the spike's own row (:mod:`edge_agent.data.learned`).

Checked on the plant simulator (raw values, before it was built): flags 5 of 5 spikes on seeds
21/22 and 4 of 4 on seeds 31/32, with 1 and 0 of 38,400 normal rows.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_agent.data.headroom import column_limits, history_rows
from edge_agent.data.jumps import MIN_HISTORY_ROWS

F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]


def excursions(ext: F64) -> F64:
    """(N + 2, C) consecutive readings -> (N, C): the excursion of each middle reading (0 where
    its two steps have the same sign; NaN where a reading is missing)."""
    into = ext[1:-1] - ext[:-2]
    out_of = ext[2:] - ext[1:-1]
    size = np.minimum(np.abs(into), np.abs(out_of))
    return np.where(into * out_of < 0, size, np.where(np.isnan(size), np.nan, 0.0))


class SpikeDetector:
    """Per channel, whether each reading was a spike: known when the next one arrives.

    Carries the last two readings across pushes: block by block gives the whole file's answer.
    """

    def __init__(self, limits: npt.ArrayLike) -> None:
        """``limits``: (C,) the channels' ``spike_above`` (inf: not judged)."""
        self._limit = np.asarray(limits, np.float64)
        self._tail = np.full((2, self._limit.shape[0]), np.nan)  # the last two readings

    def push(self, values: F64) -> tuple[BOOL, BOOL]:
        """(N, C) readings (NaN: missing) -> ((N, C) spikes among them, the last row always
        False as its way back is not known yet; (C,) whether the previous push's last row
        was one)."""
        if values.shape[0] == 0:
            return np.zeros(values.shape, np.bool_), np.zeros(values.shape[1], np.bool_)
        values = np.where(np.isfinite(values), values, np.nan)
        ext = np.concatenate([self._tail, values])
        self._tail = ext[-2:].copy()
        with np.errstate(invalid="ignore"):
            spike = excursions(ext) > self._limit  # NaN: False
        now = np.zeros(values.shape, np.bool_)
        now[:-1] = spike[1:]
        return now, spike[0]


def learned_spike_limits(values: F64) -> list[float | None]:
    """Each column's spike limit over a training history (rows to ignore set to NaN: an
    excursion next to one does not count); none for a history under ``MIN_HISTORY_ROWS``."""
    rows = history_rows(values)
    if rows < MIN_HISTORY_ROWS:
        return [None] * values.shape[1]
    return column_limits(excursions(values), rows)
