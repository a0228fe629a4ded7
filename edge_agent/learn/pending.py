"""Normal rows held in memory, in stretches, until the buffer writes them as one chunk.

Pipeline position: fleet learning, inside ``edge_agent.learn.buffer`` (which decides when rows
are taken and when a chunk is written). A stretch is a run of consecutive normal rows; one
shorter than a window can never make a window and is taken back when it ends.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


class PendingRows:
    """Rows (float64 times, float32 values) and where each stretch starts."""

    def __init__(self) -> None:
        self._ts: list[F64] = []
        self._values: list[F32] = []
        self._starts: list[int] = []
        self.count = 0  # rows held
        self.stretch = 0  # rows in the open stretch

    def append(self, ts: F64, rows: F64) -> None:
        """Rows continuing the open stretch (or starting one)."""
        if self.stretch == 0:
            self._starts.append(self.count)
        self._ts.append(ts.copy())
        self._values.append(rows.astype(np.float32))
        self.count += ts.shape[0]
        self.stretch += ts.shape[0]

    def end_stretch(self, window: int) -> None:
        """The open stretch ends; shorter than ``window`` rows, it is taken back."""
        if 0 < self.stretch < window:
            self.count -= self.stretch
            ts, values = np.concatenate(self._ts), np.concatenate(self._values)
            self._ts, self._values = [ts[: self.count]], [values[: self.count]]
            self._starts.pop()
        self.stretch = 0

    def take(self) -> tuple[F64, F32, I64]:
        """Everything held, as ``(ts, values, stretch starts)``; the holder is left empty."""
        out = (np.concatenate(self._ts), np.concatenate(self._values),
               np.array(self._starts, np.int64))
        self.clear()
        return out

    def clear(self) -> None:
        self._ts, self._values, self._starts = [], [], []
        self.count = self.stretch = 0
