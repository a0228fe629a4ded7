"""Putting samples on the model's sample grid, causally: between reading and windowing.

Sensors and historians deliver samples with jitter, duplicates, dropped rows and NaNs. The
models see a regular grid with the bundle's sample period. The rules, identical in the trainer,
``replay`` and the daemon:

* A row whose time is less than half a period after the last grid point adds nothing new; it is
  counted as a duplicate and its row maps to the latest grid point.
* A gap of up to ``max_hold`` missing grid points is filled by holding the last value, and
  those points are marked in the imputation mask. (The trainer may additionally interpolate
  held runs longer than its forward-fill limit, because it can see the far side of the gap; the
  device cannot, and never waits for the future.)
* A longer gap starts a new segment: windows never straddle it, and the window buffer warms up
  again, as it would after a power cut.
* A NaN in one channel holds that channel's last valid value (masked); before any valid value
  the channel's training mean is used.

The kernel is a plain sequential loop, so every output depends only on rows at or before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

# A row this close (in periods) to the last grid point is a duplicate, not a new sample.
DUPLICATE_FRACTION_OF_PERIOD = 0.5


@dataclass(frozen=True)
class Grid:
    """Samples on the model's grid and how input rows map onto it."""

    times: npt.NDArray[np.float64]  # (m,)
    values: npt.NDArray[np.float64]  # (m, C)
    imputed: npt.NDArray[np.bool_]  # (m, C): held or filled, not measured
    segment_start: npt.NDArray[np.int64]  # (m,): index of the first grid point of its segment
    row_to_grid: npt.NDArray[np.int64]  # (rows,): latest grid point at or before each row


@numba.njit(cache=True)
def _align_kernel(
    ts: npt.NDArray[np.float64],
    values: npt.NDArray[np.float64],
    fill: npt.NDArray[np.float64],
    period: float,
    max_hold: int,
) -> tuple[
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.bool_],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
]:  # pragma: no cover - compiled
    n, c = values.shape
    # Pass 1: how many grid points will there be?
    m = 0
    last_t = 0.0
    for i in range(n):
        if i == 0:
            m += 1
            last_t = ts[0]
            continue
        steps = int(np.floor((ts[i] - last_t) / period + DUPLICATE_FRACTION_OF_PERIOD))
        if steps <= 0:
            continue
        if steps > max_hold + 1:
            m += 1
            last_t = ts[i]
        else:
            m += steps
            last_t += steps * period
    times = np.empty(m, np.float64)
    out = np.empty((m, c), np.float64)
    imputed = np.zeros((m, c), np.bool_)
    seg = np.empty(m, np.int64)
    row_to_grid = np.empty(n, np.int64)
    held = fill.copy()
    k = -1
    seg_start = 0
    last_t = 0.0
    for i in range(n):
        if i == 0:
            steps = -1  # first row opens the first segment
        else:
            steps = int(np.floor((ts[i] - last_t) / period + DUPLICATE_FRACTION_OF_PERIOD))
        if i == 0 or steps > max_hold + 1:
            k += 1
            seg_start = k
            last_t = ts[i]
            held[:] = fill
        elif steps <= 0:
            row_to_grid[i] = k
            continue
        else:
            for _ in range(steps - 1):
                k += 1
                last_t += period
                times[k] = last_t
                out[k, :] = held
                imputed[k, :] = True
                seg[k] = seg_start
            k += 1
            last_t += period
        times[k] = last_t
        seg[k] = seg_start
        for j in range(c):
            v = values[i, j]
            if np.isnan(v):
                out[k, j] = held[j]
                imputed[k, j] = True
            else:
                out[k, j] = v
                held[j] = v
        row_to_grid[i] = k
    return times, out, imputed, seg, row_to_grid


def align_to_grid(
    timestamps: npt.NDArray[np.float64],
    values: npt.NDArray[np.float64],
    *,
    period_s: float,
    max_hold: int,
    fill: npt.NDArray[np.float64],
) -> Grid:
    """Align rows ``(timestamps, values)`` to a grid of ``period_s``; see the module docstring."""
    if period_s <= 0:
        raise ValueError(f"sample period must be > 0 s, got {period_s}")
    if max_hold < 0:
        raise ValueError(f"max_hold must be >= 0 samples, got {max_hold}")
    ts = np.ascontiguousarray(timestamps, dtype=np.float64)
    vals = np.ascontiguousarray(values, dtype=np.float64)
    fill_arr = np.ascontiguousarray(fill, dtype=np.float64)
    if vals.ndim != 2 or vals.shape[0] != ts.shape[0] or fill_arr.shape != (vals.shape[1],):
        raise ValueError(
            f"shape mismatch: timestamps {ts.shape}, values {vals.shape}, fill {fill_arr.shape}"
        )
    if ts.shape[0] == 0:
        raise ValueError("no rows to align")
    times, out, imputed, seg, row_to_grid = _align_kernel(ts, vals, fill_arr, period_s, max_hold)
    return Grid(times, out, imputed, seg, row_to_grid)


def interpolate_held_runs(grid: Grid, *, max_ffill: int) -> Grid:
    """Trainer only: replace held runs longer than ``max_ffill`` by linear interpolation.

    The device holds values through a gap because it cannot see the end of it; at the desk the
    far side is known, and a straight line is a better guess for training than a flat step.
    The imputation mask is unchanged, so windows stay marked as partly synthetic.
    """
    values = grid.values.copy()
    m, c = values.shape
    for j in range(c):
        col_mask = grid.imputed[:, j]
        i = 0
        while i < m:
            if not col_mask[i]:
                i += 1
                continue
            start = i
            while i < m and col_mask[i] and grid.segment_start[i] == grid.segment_start[start]:
                i += 1
            stop = i  # run is [start, stop)
            left = start - 1
            same_seg = left >= 0 and grid.segment_start[left] == grid.segment_start[start]
            right_ok = stop < m and grid.segment_start[stop] == grid.segment_start[start]
            if stop - start > max_ffill and same_seg and right_ok:
                frac = np.arange(1, stop - start + 1) / (stop - start + 1)
                values[start:stop, j] = values[left, j] + frac * (values[stop, j] - values[left, j])
    return Grid(grid.times, values, grid.imputed, grid.segment_start, grid.row_to_grid)
