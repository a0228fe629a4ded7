"""The sampler: from readings arriving at each source's own pace to one row per model period.

Sits between the sources (threads that call :meth:`Sampler.put`) and the pipeline (the main
loop calls :meth:`Sampler.take` once per model sample period). It keeps each channel's latest
reading, its age and whether it is fresh since the last row, which is what data quality needs
to tell a stale sensor from a slow one. Ages are measured on the monotonic clock, at arrival: a
wall-clock step (NTP correcting a Pi without RTC) must not make every channel look stale.
Recorded rows (the replay source) keep their own timestamps and go through a bounded queue
instead, so a fast file never outruns scoring.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

# Rows a replay source may queue ahead of the pipeline: bounds memory, applies back-pressure.
ROW_QUEUE_ROWS = 8192
ROW_PUT_WAIT_S = 0.2


class Sampler:
    """Thread-safe latest-value table over the model's channels (a :class:`ReadingSink`)."""

    def __init__(
        self, channels: Sequence[str], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.channels = list(channels)
        self._clock = clock
        self._index = {ch: i for i, ch in enumerate(self.channels)}
        c = len(self.channels)
        self._lock = threading.Lock()
        self._value = np.full(c, np.nan)
        self._t_read = np.full(c, -math.inf)
        self._fresh = np.zeros(c, np.bool_)
        self.rows: queue.Queue[tuple[float, npt.NDArray[np.float64]]] = queue.Queue(
            ROW_QUEUE_ROWS
        )
        self.ignored: dict[str, int] = {}  # readings of channels the model does not use

    def put(self, source: str, readings: Mapping[str, float], t: float) -> None:
        """Latest readings of ``source``; ``t`` is their wall time (ages use arrival on the
        monotonic clock instead)."""
        arrived = self._clock()
        with self._lock:
            for ch, v in readings.items():
                i = self._index.get(ch)
                if i is None:
                    self.ignored[ch] = self.ignored.get(ch, 0) + 1
                    continue
                self._value[i] = v
                self._t_read[i] = arrived
                self._fresh[i] = True

    def put_row(
        self,
        source: str,
        t: float,
        readings: Mapping[str, float],
        stop: threading.Event | None = None,
    ) -> bool:
        """Queue a whole recorded row; waits while the queue is full. False if ``stop`` was set
        before the row could be queued."""
        row = np.array([readings.get(ch, math.nan) for ch in self.channels], np.float64)
        while True:
            try:
                self.rows.put((t, row), timeout=ROW_PUT_WAIT_S)
                return True
            except queue.Full:
                if stop is not None and stop.is_set():
                    return False

    def take(
        self, now: float
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Latest values, their ages in s at ``now`` (the sampler's monotonic clock), and
        which are fresh since the last take."""
        with self._lock:
            values = self._value.copy()
            age = now - self._t_read
            fresh = self._fresh.copy()
            self._fresh[:] = False
        return values, age, fresh

    def take_rows(
        self, max_rows: int, wait_s: float
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Up to ``max_rows`` queued rows (waiting up to ``wait_s`` for the first one)."""
        ts: list[float] = []
        rows: list[npt.NDArray[np.float64]] = []
        try:
            t, r = self.rows.get(timeout=wait_s)
        except queue.Empty:
            return np.zeros(0), np.zeros((0, len(self.channels)))
        ts.append(t)
        rows.append(r)
        while len(ts) < max_rows:
            try:
                t, r = self.rows.get_nowait()
            except queue.Empty:
                break
            ts.append(t)
            rows.append(r)
        return np.array(ts, np.float64), np.vstack(rows)
