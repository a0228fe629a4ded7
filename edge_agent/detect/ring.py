"""The streaming window buffer: the last ``W`` grid points, and the windows that complete.

Sits between the grid aligner plus normalization and the cascade. Each push adds normalized
grid points (with their imputation mask and the per-sample SPE/T² statistics of
``FlatForest.sample_stats``) to a ring of ``W`` slots per channel, and returns every window
that ends at one of them, copied out oldest first as one contiguous ``(n, W, C)`` array, with
its screen features. The rule is that of :func:`edge_agent.detect.windows.window_ends`: a
complete window inside one segment, ending every ``hop`` points counted from the segment
start, with at most ``max_imputed_fraction`` of its cells imputed.

The features come from the batch kernels (``window_features``, ``window_stat_features``) run
over the gathered windows laid end to end, so a window's numbers are bit-identical whether it
was found by ``window_ends`` over a whole file or here one sample at a time. Everything runs
in one Numba call per push: the daemon pays the Python overhead once per row, not per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.detect.projection import window_stat_features
from edge_agent.detect.windows import window_features
from edge_agent.kernels import jit

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# Layout of the ring's integer state array.
_POS = 0  # slot the next point is written to (the oldest point once the ring is full)
_SEG_LEN = 1  # points of the current segment seen so far
_IMP_SUM = 2  # imputed cells among the last min(W, _SEG_LEN) points
_SEG = 3  # global index of the current segment's first point (-1 before any point)
_LAST_END = 4  # global grid index of the latest window end in this segment (-1: none)
_N_WIN = 5  # windows emitted so far: the next window's id
_POINT_WIN = 6  # id of the window current at the latest grid point (-1: none)
STATE_SIZE = 7


@dataclass(frozen=True)
class RingOutput:
    """Windows completed by one push, oldest first; ids count windows since the ring began."""

    windows: F32  # (n, W, C) normalized samples
    features: F32  # (n, F) screen features, as windows.screen_features computes them
    end_index: I64  # (n,) global grid index of each window's last point
    end_time: F64  # (n,) time of that point
    segment: I64  # (n,) global index of the first point of the window's segment
    row_window: I64  # (rows,) id of the window current at each row's grid point, or -1


@jit
def gathered_features(windows: F32, stats: F32) -> F32:  # pragma: no cover - compiled
    """Screen features of windows ``(n, W, C)`` with their statistics ``(n, W, S)``."""
    n, w, c = windows.shape
    s = stats.shape[2]
    ends = np.arange(n) * w + (w - 1)
    base = window_features(windows.reshape(n * w, c), ends, w)
    if s == 0:
        return base
    extra = window_stat_features(stats.reshape(n * w, s), ends, w)
    out = np.empty((n, base.shape[1] + extra.shape[1]), np.float32)
    out[:, : base.shape[1]] = base
    out[:, base.shape[1] :] = extra
    return out


@jit
def ring_push(
    xn: F32,
    stats: F32,
    imputed: npt.NDArray[np.bool_],
    times: F64,
    segment_start: I64,
    row_to_grid: I64,
    first_index: int,
    window: int,
    hop: int,
    max_imputed_fraction: float,
    buf_x: F32,
    buf_s: F32,
    buf_imp: I64,
    state: I64,
) -> tuple[F32, F32, I64, F64, I64, I64]:  # pragma: no cover - compiled
    """Add grid points ``first_index, first_index + 1, ...``; see :class:`RingOutput`."""
    m, c = xn.shape
    s = stats.shape[1]
    windows = np.empty((m, window, c), np.float32)
    swin = np.empty((m, window, s), np.float32)
    ends = np.empty(m, np.int64)
    point_window = np.empty(m, np.int64)
    before = state[_POINT_WIN]  # rows that repeat an earlier point see its window
    # Same expression as window_ends, so the float comparison is the same too.
    limit = max_imputed_fraction * window * c
    n = 0
    for i in range(m):
        g = first_index + i
        if segment_start[i] != state[_SEG]:
            # A new segment: the buffer warms up again.
            state[_SEG] = segment_start[i]
            state[_POS] = 0
            state[_SEG_LEN] = 0
            state[_IMP_SUM] = 0
            state[_LAST_END] = -1
        pos = state[_POS]
        cells = 0
        for j in range(c):
            cells += imputed[i, j]
        if state[_SEG_LEN] >= window:
            state[_IMP_SUM] -= buf_imp[pos]  # the oldest point leaves the window
        buf_imp[pos] = cells
        state[_IMP_SUM] += cells
        for j in range(c):
            buf_x[pos, j] = xn[i, j]
        for j in range(s):
            buf_s[pos, j] = stats[i, j]
        pos = (pos + 1) % window
        state[_POS] = pos
        state[_SEG_LEN] += 1
        seg_len = state[_SEG_LEN]
        if seg_len >= window and (seg_len - window) % hop == 0 and state[_IMP_SUM] <= limit:
            for t in range(window):
                src = pos + t if pos + t < window else pos + t - window
                for j in range(c):
                    windows[n, t, j] = buf_x[src, j]
                for j in range(s):
                    swin[n, t, j] = buf_s[src, j]
            ends[n] = g
            state[_LAST_END] = g
            state[_N_WIN] += 1
            n += 1
        # A point shows the latest window of its segment if it ended less than a hop ago.
        last = state[_LAST_END]
        state[_POINT_WIN] = state[_N_WIN] - 1 if last >= 0 and g - last < hop else -1
        point_window[i] = state[_POINT_WIN]
    row_window = np.empty(row_to_grid.shape[0], np.int64)
    for r in range(row_to_grid.shape[0]):
        k = row_to_grid[r] - first_index
        row_window[r] = point_window[k] if k >= 0 else before
    features = gathered_features(windows[:n], swin[:n])
    local = ends[:n] - first_index
    return windows[:n], features, ends[:n], times[local], segment_start[local], row_window


class WindowRing:
    """Ring buffer of the last ``window`` grid points of one machine; see the module docstring.

    ``buf_x``, ``buf_s``, ``buf_imp`` and ``state`` are the state :func:`ring_push` carries.
    """

    def __init__(
        self, window: int, hop: int, channels: int, n_stats: int, max_imputed_fraction: float
    ) -> None:
        if window < 1 or hop < 1:
            raise ValueError(f"window and hop must be >= 1 sample, got {window} and {hop}")
        self.window = int(window)
        self.hop = int(hop)
        self.max_imputed_fraction = float(max_imputed_fraction)
        self.buf_x = np.zeros((window, channels), np.float32)
        self.buf_s = np.zeros((window, n_stats), np.float32)
        self.buf_imp = np.zeros(window, np.int64)
        self.state = np.zeros(STATE_SIZE, np.int64)
        self.state[[_SEG, _LAST_END, _POINT_WIN]] = -1

    @property
    def windows_emitted(self) -> int:
        """Windows completed so far, which is also the id the next one will get."""
        return int(self.state[_N_WIN])

    def push(
        self,
        xn: F32,
        stats: F32,
        imputed: npt.NDArray[np.bool_],
        times: F64,
        segment_start: I64,
        row_to_grid: I64,
        first_index: int,
    ) -> RingOutput:
        """Add the grid points of one aligner push; see :func:`ring_push`."""
        return RingOutput(
            *ring_push(
                xn,
                stats,
                imputed,
                times,
                segment_start,
                row_to_grid,
                first_index,
                self.window,
                self.hop,
                self.max_imputed_fraction,
                self.buf_x,
                self.buf_s,
                self.buf_imp,
                self.state,
            )
        )
