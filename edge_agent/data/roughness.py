"""A channel's noise level: the median step between its last readings, against what it learned.

A burst of noise in one channel (a loose connector, electrical interference, cavitation, a
bearing starting to rattle) barely moves a window's mean reconstruction error: it is one
channel of several and zero-mean. Its signature is local roughness, and a robust measure of it
is cheap: the median of the absolute steps between the last ``NOISE_STEPS`` consecutive
readings. A step change (a compressor loading) or a spike is one or two large steps of
``NOISE_STEPS`` and leaves the median alone; noise that grows k-fold lifts it about k-fold.

* ``trainer fit`` measures each channel's largest noise level on normal rows of the history
  and records a limit over it in the manifest (``ChannelSpec.noisy_above``);
* the agent's data quality (:mod:`edge_agent.data.quality`) reports a channel over its limit
  as a ``sensor_fault`` with reason ``noisy`` (the readings are kept and scored: noise may be
  the machine's);
* the offline pipeline applies the same limit (:mod:`edge_agent.data.learned`).

The limit: :func:`edge_agent.data.headroom.learned_limit` of the history's largest level
(headroom 1.25, doubled for short histories; chosen on the simulator's noise bursts, checked on
SKAB: no file's false-alarm rate moved, and three files' F1 rose).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_agent.data.headroom import column_limits, history_rows

F64 = npt.NDArray[np.float64]

NOISE_STEPS = 8
# Batcher's odd-even merge sorting network for 8 values, less its last layer ((1, 2), (3, 4),
# (5, 6)), which only orders values 3 and 4 between themselves and so leaves their sum, twice
# the median, as it is. As numpy min/max over whole columns, in place, it takes the median of
# every row's 8 steps about five times faster than np.median over a sliding window (which
# copies and partitions each one), and a NaN anywhere reaches every output, as it does in
# np.median.
_NETWORK_8 = (
    ((0, 1), (2, 3), (4, 5), (6, 7)),
    ((0, 2), (1, 3), (4, 6), (5, 7)),
    ((1, 2), (5, 6)),
    ((0, 4), (1, 5), (2, 6), (3, 7)),
    ((2, 4), (3, 5)),
)


class NoiseMeter:
    """Per channel, the noise level at each row: the median of the last ``NOISE_STEPS``
    absolute steps between readings (NaN until that many steps without a missing value).

    Carries its state across pushes: block by block gives the whole file's answer.
    """

    def __init__(self, channels: int) -> None:
        self._last = np.full(channels, np.nan)
        self._steps = np.full((NOISE_STEPS - 1, channels), np.nan)

    def push(self, values: F64) -> F64:
        """(N, C) readings -> (N, C) noise levels."""
        if values.shape[0] == 0:
            return np.zeros(values.shape)
        if values.shape[0] == 1:  # the daemon's case, once per sample: sort 8 values per channel
            steps = np.concatenate([self._steps, np.abs(values - self._last)])
            self._last = values[0].astype(np.float64, copy=True)
            self._steps = steps[1:]
            ordered = np.sort(steps, axis=0)  # NaN sorts last; np.median would give NaN
            mid = (ordered[NOISE_STEPS // 2 - 1] + ordered[NOISE_STEPS // 2]) * 0.5
            return np.where(np.isnan(ordered[-1]), np.nan, mid)[None, :]
        prev = np.concatenate([self._last[None, :], values[:-1]])
        steps = np.concatenate([self._steps, np.abs(values - prev)])
        self._last = values[-1].astype(np.float64, copy=True)
        self._steps = steps[-(NOISE_STEPS - 1) :].copy()
        return median_of_8(steps)


def median_of_8(steps: F64) -> F64:
    """(N + 7, C) -> (N, C): row i is the median of rows i .. i + 7 of ``steps``."""
    n = steps.shape[0] - (NOISE_STEPS - 1)
    lanes = [steps[k : k + n].copy() for k in range(NOISE_STEPS)]
    spare = np.empty_like(lanes[0])
    for layer in _NETWORK_8:
        for a, b in layer:
            np.minimum(lanes[a], lanes[b], out=spare)
            np.maximum(lanes[a], lanes[b], out=lanes[b])
            lanes[a], spare = spare, lanes[a]
    level: F64 = lanes[3] + lanes[4]
    level *= 0.5
    return level


def learned_noise_limits(values: F64) -> list[float | None]:
    """Each column's noise limit over a training history (rows to ignore set to NaN)."""
    return column_limits(NoiseMeter(values.shape[1]).push(values), history_rows(values))
