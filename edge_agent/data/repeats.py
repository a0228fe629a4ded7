"""Runs of identical readings: what "stuck" means, learned at the desk and applied everywhere.

A transmitter that dies often keeps its last value: the channel repeats one reading while
the machine moves on. Whether a run of repeats is suspicious depends on the channel: a noisy
float never repeats, a coarse or slow one (a pressure in 0.1 bar steps, a flow averaged over
a minute) repeats for dozens of samples in normal running. So the limit is learned per
channel from the training history:

* ``trainer fit`` measures each channel's longest run of identical readings on the rows it
  trains on (labelled anomalies and missing values break runs) and records
  :func:`stuck_limit` of it in the manifest (``ChannelSpec.stuck_after``);
* the agent's data quality (:mod:`edge_agent.data.quality`) calls a channel stuck from that
  many identical fresh readings on, unless the operator configured ``stuck_samples``;
* the offline pipeline (``replay``, ``trainer evaluate``, the benchmarks) applies the same
  limit with :class:`RepeatCounter` (:mod:`edge_agent.data.learned`), so a stuck sensor is a
  ``sensor_fault`` there as it is on the gateway, and its readings are missing values, not a
  fault of the machine.

The rule, :func:`stuck_limit`: ``STUCK_RUN_FACTOR`` times the longest normal run, and at least
``STUCK_MIN_SAMPLES``; no limit where the history itself holds still for more than
``STUCK_MAX_SHARE`` of its rows (a set-point, a switch: nothing to learn "normal" from).
Chosen by reasoning, then checked on data: on SKAB (34 files, each trained on its first 400
rows as the benchmark does) the longest normal run in the rows after training is 43 (the flow
meter) and a factor of 5 flags 3 of about 200,000 channel-samples; on the plant simulator, whose
channels are noisy floats, the limit is the floor of 10 samples and every stuck episode (30 to
120 samples) is reported 10 samples after it begins.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_agent.data.headroom import history_rows

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

STUCK_RUN_FACTOR = 5
STUCK_MIN_SAMPLES = 10
STUCK_MAX_SHARE = 0.25
NO_LIMIT = np.iinfo(np.int64).max  # a run that can never be reached


def stuck_limit(longest_run: int, rows: int) -> int | None:
    """Identical readings in a row from which a channel counts as stuck, or None (unjudgeable)."""
    if rows <= 0 or longest_run > STUCK_MAX_SHARE * rows:
        return None
    return max(STUCK_MIN_SAMPLES, STUCK_RUN_FACTOR * longest_run)


class RepeatCounter:
    """Per channel, the length of the run of identical readings ending at each row.

    Carries its state across pushes, so a file scored block by block counts as one scored
    whole. NaN (a missing reading) never equals anything and starts a run of one.
    """

    def __init__(self, channels: int) -> None:
        self._last = np.full(channels, np.nan)
        self._run = np.zeros(channels, np.int64)

    def push(self, values: F64) -> I64:
        """(N, C) readings -> (N, C) run lengths (1 for a reading unlike the one before)."""
        n = values.shape[0]
        if n == 0:
            return np.zeros(values.shape, np.int64)
        prev = np.concatenate([self._last[None, :], values[:-1]])
        row = np.arange(n, dtype=np.int64)[:, None]
        starts = np.maximum.accumulate(np.where(values == prev, -1, row), axis=0)
        runs = np.where(starts >= 0, row - starts + 1, self._run[None, :] + row + 1)
        self._last = values[-1].astype(np.float64, copy=True)
        self._run = runs[-1].copy()
        return runs


def longest_runs(values: F64) -> I64:
    """Each column's longest run of identical readings (0 for a column of NaN only)."""
    runs = RepeatCounter(values.shape[1]).push(values)
    runs = np.where(np.isnan(values), 0, runs)
    longest: I64 = runs.max(axis=0, initial=0)
    return longest


def learned_stuck_limits(values: F64) -> list[int | None]:
    """:func:`stuck_limit` of each column of a training history (rows to ignore set to NaN)."""
    rows = history_rows(values)
    return [stuck_limit(int(r), rows) for r in longest_runs(values)]

