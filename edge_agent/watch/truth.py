"""The simulator's truth file: which faults it injected, and when, as JSON lines.

Written by ``python -m edge_agent simulate --demo --truth PATH`` (one line when an injected
episode starts, with ``"end": null``, and one when it ends), read here by the live view
(followed while it grows) and by the desk-side plot (``trainer.demo_plot``) and summary, which
set what was injected against what the agent detected. A line is::

    {"kind": "level_shift", "channel": "oil_temp_c", "start": 1718000000.0, "end": null}

with ``start``/``end`` the epoch seconds of the episode's first and last served rows. The start
line and the end line of one episode share kind, channel and start.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("edge_agent.watch.truth")


@dataclass(frozen=True)
class Injected:
    """One injected fault episode; ``end`` is None while it is still being injected."""

    kind: str
    channel: str
    start: float  # epoch s of its first served row
    end: float | None  # epoch s of its last served row

    @property
    def key(self) -> tuple[str, str, float]:
        return (self.kind, self.channel, self.start)

    def active_at(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t <= self.end)


def parse_line(line: str) -> Injected:
    """One truth line; raises ValueError saying what is wrong with it."""
    try:
        body = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg})") from err
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    try:
        kind, channel, start, end = body["kind"], body["channel"], body["start"], body["end"]
    except KeyError as err:
        raise ValueError(f"missing key {err.args[0]!r}") from err
    if not isinstance(kind, str) or not isinstance(channel, str):
        raise ValueError("kind and channel must be strings")
    if isinstance(start, bool) or not isinstance(start, int | float):
        raise ValueError(f"start must be epoch seconds, got {start!r}")
    if end is not None and (isinstance(end, bool) or not isinstance(end, int | float)):
        raise ValueError(f"end must be epoch seconds or null, got {end!r}")
    return Injected(kind, channel, float(start), None if end is None else float(end))


def merge(records: Iterable[Injected]) -> list[Injected]:
    """Start and end lines folded into one episode each, in order of start."""
    by_key: dict[tuple[str, str, float], Injected] = {}
    for r in records:
        known = by_key.get(r.key)
        if known is None or r.end is not None:
            by_key[r.key] = r
    return sorted(by_key.values(), key=lambda e: e.start)


def read_truth(path: Path) -> list[Injected]:
    """The whole file's episodes (for the plot and tests); a malformed line is logged with
    its line number and skipped. Raises OSError if the file cannot be read."""
    follower = TruthFollower(path)
    follower.poll()
    return follower.episodes


class TruthFollower:
    """Reads a truth file as it grows: :meth:`poll` takes the complete lines written since
    the last call (a line still being written waits for its newline). A file that does not
    exist yet is not an error: the simulator may not have started."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.malformed = 0
        self._offset = 0
        self._line_no = 0
        self._records: list[Injected] = []

    @property
    def episodes(self) -> list[Injected]:
        return merge(self._records)

    def active(self, t: float) -> list[Injected]:
        """The episodes being injected at epoch ``t``."""
        return [e for e in self.episodes if e.active_at(t)]

    def poll(self) -> list[Injected]:
        """New records (a start or an end line each), in file order."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        out: list[Injected] = []
        for raw in complete.splitlines():
            self._line_no += 1
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                rec = parse_line(text)
            except ValueError as err:
                self.malformed += 1
                log.warning("%s:%d: skipped a truth line: %s", self.path, self._line_no, err)
                continue
            out.append(rec)
        self._records.extend(out)
        return out
