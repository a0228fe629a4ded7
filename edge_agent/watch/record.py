"""``watch --record PATH``: the view's timeline, one JSON line per refresh, for the plot.

Written by ``edge_agent.watch.run`` about once a second, flushed line by line (a reader may
follow it); read back by ``trainer.demo_plot``, which draws the score ratio over time with
the alert threshold, the injected faults and the alert and ``open`` markers. A line::

    {"time": 1718000000.0, "score_ratio": 0.42, "alert": 0, "rows": 1234,
     "rows_per_s": 1.0, "shares": {"oil_temp_c": 0.71, ...},
     "events": [{"kind": "anomaly", "state": "open", "episode": "3f2a...", "start": ...}]}

``time`` is epoch seconds; ``score_ratio``, ``alert``, ``rows`` and ``shares`` are null while
the agent's metrics cannot be read; ``events`` lists the events that arrived since the
previous line (``start`` and ``end`` as epoch seconds, or null).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, TypedDict

from edge_agent.watch.follow import SeenEvent
from edge_agent.watch.scrape import AgentReading
from edge_agent.watch.summary import epoch

log = logging.getLogger("edge_agent.watch.record")


class RecordedEvent(TypedDict):
    kind: str
    state: str
    episode: str
    start: float | None
    end: float | None
    received: float


class RecordLine(TypedDict):
    time: float
    score_ratio: float | None
    alert: int | None
    rows: float | None
    rows_per_s: float | None
    shares: dict[str, float] | None
    events: list[RecordedEvent]


def record_line(
    now: float, reading: AgentReading | None, rows_per_s: float | None,
    events: Sequence[SeenEvent],
) -> RecordLine:
    return RecordLine(
        time=round(now, 3),
        score_ratio=None if reading is None else reading.score_ratio,
        alert=None if reading is None else int(reading.alert),
        rows=None if reading is None else reading.rows,
        rows_per_s=None if rows_per_s is None else round(rows_per_s, 3),
        shares=None if reading is None else dict(reading.shares),
        events=[
            RecordedEvent(
                kind=e.kind, state=e.state, episode=e.episode, start=epoch(e.data.get("start")),
                end=epoch(e.data.get("end")), received=round(e.received, 3),
            )
            for e in events
        ],
    )


class Recorder:
    """Writes the timeline to ``path`` (replacing an older recording). Raises OSError if the
    file cannot be created; a write that fails later is logged once and recording stops,
    the view goes on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = path.open("w", encoding="utf-8")

    def write(self, line: RecordLine) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._file.flush()
        except OSError as err:
            log.warning("--record %s: cannot write (%s); recording stopped", self.path, err)
            self.close()

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError as err:
                log.warning("--record %s: cannot close (%s)", self.path, err)


def read_record(path: Path) -> list[RecordLine]:
    """The lines of a recording, in order; a line that is not a JSON object (say, cut short
    when the view was killed) is logged with its number and skipped."""
    out: list[RecordLine] = []
    with path.open(encoding="utf-8") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                body: Any = json.loads(text)
            except json.JSONDecodeError as err:
                log.warning("%s:%d: skipped a line that is not JSON (%s)", path, n, err.msg)
                continue
            if not isinstance(body, dict) or not isinstance(body.get("time"), int | float):
                log.warning("%s:%d: skipped a line without a time", path, n)
                continue
            body.setdefault("events", [])
            out.append(body)  # type: ignore[arg-type]  # written by record_line
    return out
