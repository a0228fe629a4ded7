"""The replay source: a recorded CSV fed to the agent as if it were arriving live.

Sits where a Modbus or serial source would. Rows keep their own timestamps, so the agent's
pipeline sees exactly what ``edge_agent replay`` sees; that is how the daemon is checked
against ``replay``, soaked for hours in minutes, and benchmarked. ``speed`` paces rows at a
multiple of real time (0: as fast as the pipeline takes them).
"""

from __future__ import annotations

import logging
import time

from edge_agent.data.table import read_table
from edge_agent.errors import EdgeAnomalyError
from edge_agent.sources.base import ReadingSink, Source
from edge_agent.sources.config import ReplaySource

log = logging.getLogger("edge_agent.sources.replay")


class Replay(Source):
    def __init__(self, cfg: ReplaySource, channels: list[str]) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self._channels = list(channels)
        # Read up front: a bad file is a start-up error with file, column and row, not a
        # silent thread death.
        self.table = read_table(cfg.path, time_col=cfg.time_col, channels=self._channels)
        self.finished = False

    @property
    def channels(self) -> list[str]:
        return self._channels

    def _run(self, sink: ReadingSink) -> None:
        t_col = self.table.timestamps
        values = self.table.values
        offset = 0.0
        try:
            while not self._stop.is_set():
                wall0 = time.monotonic()
                for i in range(t_col.shape[0]):
                    t = float(t_col[i]) + offset
                    if self.cfg.speed > 0:
                        due = wall0 + (t_col[i] - t_col[0]) / self.cfg.speed
                        if self._stop.wait(max(0.0, due - time.monotonic())):
                            return
                    row = dict(zip(self._channels, values[i].tolist(), strict=True))
                    if not sink.put_row(self.name, t, row, self._stop):
                        return
                    self.counters.polls += 1
                    self.counters.samples += len(self._channels)
                if not self.cfg.loop:
                    break
                # Loop: shift time so the grid sees one continuous history, one period later.
                span = float(t_col[-1] - t_col[0])
                step = float(t_col[1] - t_col[0]) if t_col.shape[0] > 1 else 1.0
                offset += span + step
        except EdgeAnomalyError:  # pragma: no cover - the table was checked at start
            log.exception("replay source %s failed", self.name)
        finally:
            self.finished = True
