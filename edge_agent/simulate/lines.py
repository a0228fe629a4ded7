"""A simulated serial sensor for ``edge_agent simulate``: one text line per row on a pty.

Part of the simulator that stands in for a plant: plays the microcontroller behind a
``serial_line`` source, writing ``v1,v2,...`` (csv, in the config's column order and
delimiter) or ``key=value`` pairs (kv) to ``<port>.sim``, which socat joins to the agent's
``port``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from edge_agent.simulate.rows import format_value
from edge_agent.sources.config import SerialLineSource

LINE_END = "\n"


class LineEndpoint:
    """Writes each row as one line; a line nobody reads is dropped, as on a real UART."""

    def __init__(self, source: SerialLineSource, sim_port: Path, channels: Sequence[str]) -> None:
        self.source = source
        self.sim_port = sim_port
        # kv without keys means "every channel", so it sends all the simulator has.
        self._keys = [c for c in source.columns if c] or list(channels)
        self._fd: int | None = None
        self.dropped = 0

    def open(self) -> None:
        # Non-blocking, so a full pty buffer (no reader) never stalls the simulator.
        self._fd = os.open(self.sim_port, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)

    def format_row(self, row: Mapping[str, float]) -> str:
        if self.source.format == "csv":
            fields = [format_value(row[c]) if c else "" for c in self.source.columns]
            return self.source.delimiter.join(fields) + LINE_END
        return " ".join(f"{k}={format_value(row[k])}" for k in self._keys) + LINE_END

    def publish(self, row: Mapping[str, float]) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, self.format_row(row).encode("ascii"))
        except BlockingIOError:
            self.dropped += 1

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
