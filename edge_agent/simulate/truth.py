"""Ground truth of ``edge_agent simulate --truth``: a JSON line as each injected fault starts
and ends.

Part of the simulator that stands in for a plant: as the serve loop publishes each row it tells
:class:`TruthLog` which fault episode the row is in. When an episode's first row is served the
log appends ``{"kind", "channel", "start", "end": null}``, and when its last row is served the
same line with ``end`` set; ``start`` and ``end`` are the wall times (epoch seconds) at which
those rows were published. Each line goes to the file in one ``write`` on an append-only
descriptor, so a reader following the file live (``edge_agent watch --truth``) never waits
for a buffer and, short of a full disk, never sees half a line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from edge_agent.errors import ConfigError
from edge_agent.simulator.faults import FaultEpisode

log = logging.getLogger(__name__)

# Wall times to the millisecond: finer than any serve period, without float noise in the file.
TIME_DECIMALS = 3
FILE_MODE = 0o644


class TruthLog:
    """Appends the start and end of every served fault episode to a JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd: int | None = os.open(
                path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
            )
        except OSError as exc:
            raise ConfigError(
                f"simulate: cannot open the truth file {str(path)!r} for appending "
                f"({exc.strerror}); pass a writable path to --truth"
            ) from None
        self._open: FaultEpisode | None = None
        self._start = 0.0
        self._last = 0.0
        self.written = 0
        self.dropped = 0

    def served(self, episode: tuple[FaultEpisode, int] | None, t: float) -> None:
        """Record that a row was published at wall time ``t``; ``episode`` is the fault
        episode it is in and its place there (``RowFeed.episode``), ``None`` when normal."""
        if self._open is not None and (episode is None or episode[1] == 0):
            # The open episode's last row was never served (it cannot be skipped today, but a
            # start without an end would leave a reader waiting forever).
            self._end()
        if episode is None:
            return
        fault, place = episode
        if self._open is None:
            # Normally the episode's first row; mid-episode only if serving began inside it.
            self._open, self._start = fault, t
            self._write(fault, t, None)
        self._last = t
        if place == fault.length - 1:
            self._end()

    def close(self) -> None:
        """End an episode cut short by the simulator stopping (at its last served row), then
        close the file."""
        if self._open is not None:
            self._end()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        log.info(
            "truth: %d line(s) written to %s, %d dropped", self.written, self.path, self.dropped
        )

    def _end(self) -> None:
        assert self._open is not None
        self._write(self._open, self._start, self._last)
        self._open = None

    def _write(self, episode: FaultEpisode, start: float, end: float | None) -> None:
        record = {
            "kind": episode.kind,
            "channel": episode.channel,
            "start": round(start, TIME_DECIMALS),
            "end": None if end is None else round(end, TIME_DECIMALS),
        }
        line = json.dumps(record) + "\n"
        if self._fd is None:
            return
        data = line.encode("utf-8")
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            # A full or failing disk costs the truth line, never the simulator.
            self.dropped += 1
            log.warning(
                "truth: could not append to %s (%s); dropped: %s",
                self.path,
                exc.strerror,
                line.strip(),
            )
            return
        self.written += 1
