"""The last clean rows the daemon scored, so that a model swapped in starts on full windows.

Sits beside the pipeline in the agent's main loop: every row that data quality passed on (bad
readings already NaN) and the pipeline scored is also written here. When a new model takes
over (SIGHUP, over-the-air update) its pipeline is primed with these rows, so the first live
row after the swap is scored in a full window and no row goes unscored. A fixed-size ring of
NumPy arrays: memory does not grow with uptime, and appending a row allocates nothing.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


class RecentRows:
    """A ring of the last ``capacity`` ``(timestamp, row)`` pairs, columns named ``channels``."""

    def __init__(self, capacity: int, channels: list[str]) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 row, got {capacity}")
        self.channels = list(channels)
        self._ts = np.zeros(capacity, np.float64)
        self._rows = np.zeros((capacity, len(self.channels)), np.float64)
        self._next = 0  # where the next row goes
        self._count = 0

    @property
    def capacity(self) -> int:
        return int(self._ts.shape[0])

    def __len__(self) -> int:
        return self._count

    def append(self, ts: F64, rows: F64) -> None:
        """Rows ``(ts (n,), rows (n, C))`` in time order; only the last ``capacity`` stay."""
        n, cap = ts.shape[0], self.capacity
        if n >= cap:
            self._ts[:] = ts[-cap:]
            self._rows[:] = rows[-cap:]
            self._next, self._count = 0, cap
            return
        idx = (self._next + np.arange(n)) % cap if self._next + n > cap else None
        if idx is None:
            self._ts[self._next : self._next + n] = ts
            self._rows[self._next : self._next + n] = rows
        else:
            self._ts[idx] = ts
            self._rows[idx] = rows
        self._next = (self._next + n) % cap
        self._count = min(self._count + n, cap)

    def clear(self) -> None:
        """Forget every row (a wall-clock step: old stamps no longer line up with new ones)."""
        self._next = self._count = 0

    def latest(
        self, n: int | None = None, channels: list[str] | None = None
    ) -> tuple[F64, F64] | None:
        """The last ``n`` rows (all held if None), oldest first, as copies; with ``channels``,
        only those columns in that order, or None if one of them is not held."""
        cols: npt.NDArray[np.intp] | None = None
        if channels is not None:
            if any(ch not in self.channels for ch in channels):
                return None
            cols = np.array([self.channels.index(ch) for ch in channels], np.intp)
        k = self._count if n is None else max(0, min(n, self._count))
        order = (self._next - k + np.arange(k)) % self.capacity
        ts = self._ts[order]
        rows = self._rows[order] if cols is None else self._rows[np.ix_(order, cols)]
        return ts, rows

    def resized(self, capacity: int, channels: list[str]) -> RecentRows:
        """A ring of ``capacity`` rows over ``channels``, holding what of this one carries
        over (nothing when a channel is not held here)."""
        out = RecentRows(capacity, channels)
        kept = self.latest(capacity, channels)
        if kept is not None:
            out.append(*kept)
        return out
