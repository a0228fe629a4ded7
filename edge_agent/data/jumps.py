"""Jumps: a reading further from the one before than the channel ever moved in one step.

A glitch of one or a few samples (a bad frame that still parses, an electrical transient, a
transmitter's brief fault) barely moves a window's mean reconstruction error: on the plant
simulator the autoencoder misses spikes of a single sample whose windows sit at half the
threshold. Its signature is a step between consecutive readings larger than any the channel
made in normal running: a rate-of-change limit, the oldest plausibility check of process
instrumentation, here learned per channel instead of typed in.

* ``trainer fit`` measures each channel's largest step between consecutive readings on normal
  rows of the history and records a limit over it in the manifest
  (``ChannelSpec.jump_above``);
* the agent's data quality (:mod:`edge_agent.data.quality`) reports a jump as a
  ``sensor_fault`` with reason ``jump``; the reading is kept and scored (it may be the
  machine's, and the model should see it);
* the offline pipeline applies the same rule (:mod:`edge_agent.data.learned`).

The rule (:class:`JumpDetector`): a reading is a jump when it is more than the limit away both
from the reading just before it and from the last reading that was not a jump. The second
condition keeps a spike's way back from counting: after a one-sample spike the next reading
is far from the spike but near the reading before it. A step to a new level (a level shift,
a machine that really does change that fast) is reported once, at the step: the reading after
it is near its predecessor and becomes the new reference. A missing reading breaks the chain:
the step across a gap is no measure of how fast the channel moves, so the first reading after
one is not judged.

The limit: the same headroom over the history's largest step as the noise limit has over its
largest noise level (:func:`edge_agent.data.headroom.learned_limit`), and none from a history of
fewer than ``MIN_HISTORY_ROWS`` rows. A noise level is the sensor's and a few minutes show it;
the largest step is the machine's (a start, a stop, a valve stroking) and a short history has
seen few of its moves: every move it has not seen would be a "jump". Checked on data: the
simulator's two days give limits that flag 4 and 5 normal rows of 38,400 (each the step back
at a fault's end) and catch 3 of its 5 spikes on their own, the single-sample one the
autoencoder misses among them (the other two are in the motor current and the flow, whose
normal loading steps are larger than the spikes); ``anomaly-free.csv``'s first fifth (1,881
rows) gives limits that flag 5 of the 7,524 rows after it. SKAB's 400-row histories learn none:
with limits they flagged 16 of 11,030 normal rows after training and, inside the anomalies,
rows that NAB counts as false detections (its windows are the first minute of each anomaly),
for NAB 32.43 -> 32.30 and F1 0.758 -> 0.759 (``bench/skab.py``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_agent.data.headroom import SHORT_HISTORY_ROWS, column_limits, history_rows

F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]

# Fewest history rows a jump limit is learned from: the length below which every learned
# limit's headroom is doubled for having seen little of normal.
MIN_HISTORY_ROWS = SHORT_HISTORY_ROWS


class JumpDetector:
    """Per channel, whether each reading is a jump (:mod:`edge_agent.data.jumps`).

    Carries its state across pushes: block by block gives the whole file's answer. Vectorized
    over rows: only the few readings whose step to the one before is over the limit (none in
    normal running) are resolved one by one.
    """

    def __init__(self, limits: npt.ArrayLike) -> None:
        """``limits``: (C,) the channels' ``jump_above`` (inf: not judged)."""
        self._limit = np.asarray(limits, np.float64)
        n = self._limit.shape[0]
        self._last = np.full(n, np.nan)  # the previous reading
        self._ref = np.full(n, np.nan)  # the last reading that was not a jump

    def push(self, values: F64) -> BOOL:
        """(N, C) readings (NaN: missing) -> (N, C) jumps."""
        n = values.shape[0]
        finite = np.isfinite(values)
        values = np.where(finite, values, np.nan)  # ±inf is as missing as NaN
        if n == 1:  # the daemon's case, once per sample
            return self._push_one(values[0])[None, :]
        out = np.zeros(values.shape, np.bool_)
        if n == 0:
            return out
        prev = np.concatenate([self._last[None, :], values[:-1]])
        with np.errstate(invalid="ignore"):
            # NaN on either side (a missing reading) compares False: not judged.
            over = np.abs(values - prev) > self._limit
        if not over.any():
            self._settle(values, finite, out)
            return out
        # A reading not over the limit against its predecessor is its channel's reference
        # from then on; -1: the reference carried in from earlier pushes.
        rows = np.arange(n)[:, None]
        ref_row = np.maximum.accumulate(np.where(finite & ~over, rows, -1), axis=0)
        for c in np.flatnonzero(over.any(axis=0)).tolist():
            self._resolve(values[:, c], over[:, c], ref_row[:, c], c, out[:, c])
        self._settle(values, finite, out)
        return out

    def _push_one(self, x: F64) -> BOOL:
        """One reading per channel: the rule as stated, without the search for candidates."""
        with np.errstate(invalid="ignore"):
            step, away = np.abs(x - self._last), np.abs(x - self._ref)
        jump: BOOL = (step > self._limit) & (away > self._limit)
        self._ref = np.where(jump, self._ref, x)  # a missing reading: no reference
        self._last = x
        return jump

    def _resolve(self, x: F64, over: BOOL, ref_row: I64, c: int, out: BOOL) -> None:
        """Channel ``c``'s candidates in order: each is a jump when it is also over the limit
        from the last reading that was not one."""
        limit = self._limit[c]
        kept = -1  # the latest candidate found not to be a jump
        for t in np.flatnonzero(over).tolist():
            r = max(int(ref_row[t - 1]) if t > 0 else -1, kept)
            ref = x[r] if r >= 0 else self._ref[c]
            if abs(x[t] - ref) > limit:
                out[t] = True
            else:
                kept = t

    def _settle(self, values: F64, finite: BOOL, jumps: BOOL) -> None:
        """Carry the last reading and the last reference into the next push."""
        last = values[-1]
        good = finite & ~jumps
        # Per channel, the last reading that is no jump, unless a missing one came after it.
        idx = np.arange(values.shape[0])[:, None]
        last_good = np.where(good, idx, -1).max(axis=0)
        last_missing = np.where(~finite, idx, -1).max(axis=0)
        cols = np.arange(values.shape[1])
        ref = np.where(last_good >= 0, values[np.maximum(last_good, 0), cols], self._ref)
        self._ref = np.where(last_missing > last_good, np.nan, ref)
        self._last = last.astype(np.float64, copy=True)


def learned_jump_limits(values: F64) -> list[float | None]:
    """Each column's jump limit over a training history (rows to ignore set to NaN: a
    step to or from one does not count); none for a history under ``MIN_HISTORY_ROWS``."""
    rows = history_rows(values)
    if rows < MIN_HISTORY_ROWS:
        return [None] * values.shape[1]
    return column_limits(np.abs(np.diff(values, axis=0)), rows)
