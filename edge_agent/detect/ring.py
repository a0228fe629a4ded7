"""The streaming window buffer: the last ``W`` grid points, and the windows that complete.

Sits between the grid aligner plus normalization and the cascade. Each push adds normalized
grid points (with their imputation mask and the per-sample SPE/T² statistics of
``FlatForest.sample_stats``) to a ring of ``W`` slots per channel, and returns every window
that ends at one of them, with its screen features. The rule is that of
:func:`edge_agent.detect.windows.window_ends`: a complete window inside one segment, ending every
``hop`` points counted from the segment start, with at most ``max_imputed_fraction`` of its
cells imputed.

A push does not copy its windows out (``W`` copies of every point, most of them never looked at
again: the forest passes most windows on their features alone). It lays the ring's last
``W - 1`` points and the pushed ones end to end, ``(W - 1 + m, C)``, and computes every window's
features there with the batch kernels (``window_features``, ``window_stat_features``), so a
window's numbers are bit-identical whether it was found by ``window_ends`` over a whole file or
here one sample at a time. :class:`WindowSource` gathers the windows stage 2 asks for from
that array. Everything runs in one Numba call per push: the daemon pays the Python overhead
once per row, not per step.
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
# Per-window integers ring_push returns in one array (last row, end index, segment).
INT_PARTS = 3


class WindowSource:
    """The windows of one push, gathered only when asked for (stage 2's share of them).

    ``points`` are the push's normalized points after the ring's last ``W - 1``; window ``i``
    is ``points[ends[i] - W + 1 : ends[i] + 1]``. Indexing with an array of window indices
    gives those windows as one C-contiguous ``(k, W, C)`` array (a view for a single one).
    """

    __slots__ = ("ends", "points", "shape", "window")

    def __init__(self, points: F32, ends: I64, window: int) -> None:
        self.points = points
        self.ends = ends
        self.window = window
        self.shape = (int(ends.shape[0]), window, int(points.shape[1]))

    def rows(self) -> tuple[F32, I64]:
        """Every window as one row of ``W * C`` values without a copy: a read-only strided
        view of the points (row ``r`` is the window starting at point ``r``) and each
        window's row in it."""
        p = np.ascontiguousarray(self.points)
        view: F32 = np.lib.stride_tricks.as_strided(
            p,
            shape=(p.shape[0] - self.window + 1, self.window * p.shape[1]),
            strides=(p.strides[0], p.strides[1]),
            writeable=False,
        )
        return view, self.ends - (self.window - 1)

    def __getitem__(self, idx: npt.NDArray[np.intp]) -> F32:
        last = self.ends[idx]
        if last.shape[0] == 1:  # the daemon's case: one window, no copy
            k = int(last[0])
            return self.points[k - self.window + 1 : k + 1][None]
        rows = (last - (self.window - 1))[:, None] + np.arange(self.window)
        out: F32 = self.points[rows]
        return out


@dataclass(frozen=True)
class RingOutput:
    """Windows completed by one push, oldest first; ids count windows since the ring began."""

    source: WindowSource  # the windows, gathered on demand
    features: F32  # (n, F) screen features, as windows.screen_features computes them
    end_index: I64  # (n,) global grid index of each window's last point
    end_time: F64  # (n,) time of that point
    segment: I64  # (n,) global index of the first point of the window's segment
    row_window: I64  # (rows,) id of the window current at each row's grid point, or -1

    @property
    def windows(self) -> F32:
        """Every window, ``(n, W, C)`` normalized samples."""
        return self.source[np.arange(self.source.shape[0])]


@jit
def chained_features(points: F32, stats: F32, ends: I64, window: int) -> F32:  # pragma: no cover
    """Screen features of the windows ending at ``ends`` of ``points`` ``(m, C)`` with their
    statistics ``(m, S)``: ``screen_features``, in one compiled call."""
    base = window_features(points, ends, window)
    s = stats.shape[1]
    if s == 0:
        return base
    extra = window_stat_features(stats, ends, window)
    out = np.empty((ends.shape[0], base.shape[1] + extra.shape[1]), np.float32)
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
) -> tuple[F32, F32, F64, I64]:  # pragma: no cover - compiled
    """Add grid points ``first_index, first_index + 1, ...``; see :class:`RingOutput`.

    Returns the points laid end to end (the ring's last ``W - 1``, then these), the features,
    ``end_time``, and the integers of :func:`split_ints` in one array: each array a compiled
    kernel returns costs the daemon a Python object per row."""
    m, c = xn.shape
    s = stats.shape[1]
    lead = window - 1
    points = np.empty((lead + m, c), np.float32)
    chained_stats = np.empty((lead + m, s), np.float32)
    # The ring's last W - 1 points, oldest first (slots pos + 1 .. pos + W - 1): windows that
    # began before this push read them here. Slots not yet filled in this segment are never
    # read: a window needs W points of one segment.
    start = state[_POS] + 1
    for t in range(lead):
        src = (start + t) % window
        for j in range(c):
            points[t, j] = buf_x[src, j]
        for j in range(s):
            chained_stats[t, j] = buf_s[src, j]
    points[lead:] = xn
    chained_stats[lead:] = stats
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
    ints = np.empty(INT_PARTS * n + row_to_grid.shape[0], np.int64)
    for w in range(n):
        local = ends[w] - first_index
        ints[w] = local + lead
        ints[n + w] = ends[w]
        ints[2 * n + w] = segment_start[local]
    ints[INT_PARTS * n :] = row_window
    features = chained_features(points, chained_stats, ints[:n], window)
    return points, features, times[ends[:n] - first_index], ints


def split_ints(ints: I64, n: int) -> tuple[I64, I64, I64, I64]:
    """:func:`ring_push`'s integers for ``n`` windows: each window's last row in the points,
    ``end_index``, ``segment`` and ``row_window`` (views)."""
    return ints[:n], ints[n : 2 * n], ints[2 * n : INT_PARTS * n], ints[INT_PARTS * n :]


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
        points, features, end_time, ints = ring_push(
            xn, stats, imputed, times, segment_start, row_to_grid, first_index, self.window,
            self.hop, self.max_imputed_fraction, self.buf_x, self.buf_s, self.buf_imp, self.state,
        )  # fmt: skip
        last_row, end_index, segment, row_window = split_ints(ints, features.shape[0])
        source = WindowSource(points, last_row, self.window)
        return RingOutput(source, features, end_index, end_time, segment, row_window)
