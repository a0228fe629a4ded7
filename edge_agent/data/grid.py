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

There is one implementation, :class:`GridAligner`: a sequential Numba loop whose state (last
grid time, held values, grid index, segment start) lives in small arrays carried from one
:meth:`GridAligner.push` to the next. The daemon pushes rows as they arrive; ``replay`` and the
trainer call :func:`align_to_grid`, a fresh aligner over all rows. Every output depends only on
rows at or before it, and a grid point never changes once emitted, so any split of the rows
into pushes gives the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.kernels import jit

# A row this close (in periods) to the last grid point is a duplicate, not a new sample.
DUPLICATE_FRACTION_OF_PERIOD = 0.5

# Layout of the aligner's integer state array.
_K = 0  # global index of the latest grid point (-1 before the first row)
_SEG = 1  # global index of the first grid point of the current segment
_STARTED = 2  # 1 once a row has been seen
# align_push's max_points for "take every row".
ALL_ROWS = np.iinfo(np.int64).max

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Grid:
    """Samples on the model's grid and how input rows map onto it."""

    times: npt.NDArray[np.float64]  # (m,)
    values: npt.NDArray[np.float64]  # (m, C)
    imputed: npt.NDArray[np.bool_]  # (m, C): held or filled, not measured
    segment_start: npt.NDArray[np.int64]  # (m,): index of the first grid point of its segment
    row_to_grid: npt.NDArray[np.int64]  # (rows,): latest grid point at or before each row


@dataclass(frozen=True)
class GridChunk:
    """The grid points one push added. Indices are global: counted from the aligner's first
    grid point, so they stay valid across pushes."""

    first_index: int  # global index of ``times[0]`` (the next index if nothing was added)
    times: F64  # (m,)
    values: F64  # (m, C)
    imputed: npt.NDArray[np.bool_]  # (m, C)
    segment_start: I64  # (m,): global index of the first point of each point's segment
    row_to_grid: I64  # (rows,): global index of the latest grid point at or before each row

    @property
    def new_segment(self) -> npt.NDArray[np.bool_]:
        """True at points that open a segment (the first point, or after a long gap)."""
        idx = np.arange(self.first_index, self.first_index + self.times.shape[0])
        out: npt.NDArray[np.bool_] = self.segment_start == idx
        return out


@jit
def _steps(t: float, last_t: float, period: float) -> int:  # pragma: no cover - compiled
    """Grid periods from ``last_t`` to ``t``, rounded so that jitter under half a period is 0."""
    return int(np.floor((t - last_t) / period + DUPLICATE_FRACTION_OF_PERIOD))


@jit
def align_push(
    ts: F64,
    values: F64,
    fill: F64,
    period: float,
    max_hold: int,
    last_t_state: F64,
    held: F64,
    state: I64,
    max_points: int,
) -> tuple[F64, F64, npt.NDArray[np.bool_], I64, I64]:  # pragma: no cover - compiled
    """Align rows, carrying ``last_t_state`` (1,), ``held`` (C,) and ``state`` (3,) across
    calls; returns the new points' times, values, mask, segment starts and each row's point.

    Stops before the row that would take the new points past ``max_points`` (but always takes
    the first row): ``row_to_grid`` is as long as the rows consumed.
    """
    n, c = values.shape
    # Pass 1: how many rows and grid points? Same arithmetic as pass 2, so the count cannot
    # differ from what pass 2 writes.
    m = 0
    used = n
    last_t = last_t_state[0]
    started = state[_STARTED] == 1
    for i in range(n):
        steps = _steps(ts[i], last_t, period) if started else -1
        restart = not started or steps > max_hold + 1
        add = 1 if restart else max(steps, 0)
        if i > 0 and m + add > max_points:
            used = i
            break
        m += add
        if restart:
            last_t = ts[i]
            started = True
        else:
            for _ in range(add):
                last_t += period
    times = np.empty(m, np.float64)
    out = np.empty((m, c), np.float64)
    imputed = np.zeros((m, c), np.bool_)
    seg = np.empty(m, np.int64)
    row_to_grid = np.empty(used, np.int64)
    k = state[_K]
    base = k + 1
    seg_start = state[_SEG]
    started = state[_STARTED] == 1
    last_t = last_t_state[0]
    for i in range(used):
        steps = _steps(ts[i], last_t, period) if started else -1
        if not started or steps > max_hold + 1:
            # First row, or a gap too long to hold across: open a new segment.
            k += 1
            seg_start = k
            last_t = ts[i]
            held[:] = fill
            started = True
        elif steps <= 0:
            row_to_grid[i] = k
            continue
        else:
            for _ in range(steps - 1):
                k += 1
                last_t += period
                times[k - base] = last_t
                out[k - base, :] = held
                imputed[k - base, :] = True
                seg[k - base] = seg_start
            k += 1
            last_t += period
        r = k - base
        times[r] = last_t
        seg[r] = seg_start
        for j in range(c):
            v = values[i, j]
            if np.isnan(v):
                out[r, j] = held[j]
                imputed[r, j] = True
            else:
                out[r, j] = v
                held[j] = v
        row_to_grid[i] = k
    state[_K] = k
    state[_SEG] = seg_start
    state[_STARTED] = 1 if started else 0
    last_t_state[0] = last_t
    return times, out, imputed, seg, row_to_grid


class GridAligner:
    """Stateful grid alignment of one machine's rows; feed rows in arrival order.

    ``last_t``, ``held`` and ``state`` are the state :func:`align_push` carries from call to
    call; a fused caller (the streaming pipeline) may pass them to the kernel itself.
    """

    def __init__(self, period_s: float, max_hold: int, fill: npt.NDArray[np.float64]) -> None:
        if period_s <= 0:
            raise ValueError(f"sample period must be > 0 s, got {period_s}")
        if max_hold < 0:
            raise ValueError(f"max_hold must be >= 0 samples, got {max_hold}")
        self.period_s = float(period_s)
        self.max_hold = int(max_hold)
        self.fill = np.ascontiguousarray(fill, dtype=np.float64)
        if self.fill.ndim != 1:
            raise ValueError(f"fill must be one value per channel, got shape {self.fill.shape}")
        self.channels = int(self.fill.shape[0])
        self.last_t = np.zeros(1, np.float64)
        self.held = self.fill.copy()
        self.state = np.array([-1, -1, 0], np.int64)

    @property
    def next_index(self) -> int:
        """Global index the next new grid point will get (= grid points emitted so far)."""
        return int(self.state[_K]) + 1

    @property
    def segment_start(self) -> int:
        """Global index of the first point of the current segment (-1 before any row)."""
        return int(self.state[_SEG])

    def break_segment(self) -> None:
        """The next row opens a new segment whatever its time, as after a long gap: used when
        the wall clock steps, since rows then stop being comparable with the ones before."""
        self.state[_STARTED] = 0

    def push(self, timestamps: F64, values: F64) -> GridChunk:
        """Align rows ``(timestamps (n,), values (n, C))``; returns the grid points they add."""
        ts = np.ascontiguousarray(timestamps, dtype=np.float64)
        vals = np.ascontiguousarray(values, dtype=np.float64)
        if ts.ndim != 1 or vals.shape != (ts.shape[0], self.channels):
            raise ValueError(
                f"shape mismatch: timestamps {ts.shape}, values {vals.shape}, "
                f"expected (n, {self.channels})"
            )
        first = int(self.state[_K]) + 1
        times, out, imputed, seg, row_to_grid = align_push(
            ts, vals, self.fill, self.period_s, self.max_hold, self.last_t, self.held, self.state,
            ALL_ROWS,
        )  # fmt: skip
        return GridChunk(first, times, out, imputed, seg, row_to_grid)


def align_to_grid(
    timestamps: npt.NDArray[np.float64],
    values: npt.NDArray[np.float64],
    *,
    period_s: float,
    max_hold: int,
    fill: npt.NDArray[np.float64],
) -> Grid:
    """Align rows ``(timestamps, values)`` to a grid of ``period_s``; see the module docstring.

    A fresh :class:`GridAligner` over all rows: the trainer, ``replay`` and the daemon share
    one implementation.
    """
    aligner = GridAligner(period_s, max_hold, fill)
    if np.shape(timestamps)[:1] == (0,):
        raise ValueError("no rows to align")
    chunk = aligner.push(timestamps, values)
    return Grid(chunk.times, chunk.values, chunk.imputed, chunk.segment_start, chunk.row_to_grid)


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
