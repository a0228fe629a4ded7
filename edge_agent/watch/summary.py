"""The end summary of a watch: what the simulator injected against what the agent detected.

Printed by ``edge_agent watch`` when it ends. Each injected episode (from the truth file,
``edge_agent.watch.truth``) is detected when an anomaly episode overlaps it: the episode's
``start``..``end`` (sample times; still open: until now) meets the fault's span extended by
``grace_s`` (one model window: a window keeps seeing a fault until it has slid past it). Its
delay runs from the fault's first served row to the first such episode's ``open`` message
(the message's ``created`` time, when the alert was raised). Anomaly episodes that overlap no
injected fault are false alarms. Only what overlaps the watched period counts (faults by
their served rows, episodes by when their messages were made), so a truth file or an event
store left from an earlier run does not leak into this one.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.watch.truth import Injected

EPISODE_SHORT_CHARS = 8  # as `edge_agent events` shows episode ids
COLUMN_GAP = "  "


def epoch(stamp: object) -> float | None:
    """An event's ISO 8601 time (``...Z``) as epoch seconds; None if absent or unreadable."""
    if not isinstance(stamp, str):
        return None
    try:
        return dt.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def clock(t: float) -> str:
    """Epoch seconds as local wall-clock time, as a person at the gateway reads it."""
    return dt.datetime.fromtimestamp(t).strftime("%H:%M:%S")


@dataclass(frozen=True)
class Detected:
    """One anomaly episode, from its open/update/close messages."""

    episode: str
    start: float  # epoch s: sample time where the evidence starts
    end: float | None  # epoch s of the closing sample; None while open
    opened: float  # epoch s (wall clock) when the first message seen of it was made
    closed: float | None  # epoch s (wall clock) when its close was made
    top_channel: str | None

    def overlaps(self, a: float, b: float, until: float) -> bool:
        """The episode's samples meet ``[a, b]`` (an open episode lasts until ``until``)."""
        return self.start <= b and (until if self.end is None else self.end) >= a

    def reported_within(self, since: float, until: float) -> bool:
        """Its messages were made within ``[since, until]`` on the agent's wall clock (which
        a replayed file's sample times are not)."""
        return self.opened <= until and (self.closed is None or self.closed >= since)


def detected_episodes(events: Iterable[Mapping[str, Any]]) -> list[Detected]:
    """Anomaly episodes from event payloads (any order, duplicates allowed), by start."""
    by_episode: dict[str, list[Mapping[str, Any]]] = {}
    for e in events:
        if e.get("kind") == "anomaly" and isinstance(e.get("episode"), str):
            by_episode.setdefault(e["episode"], []).append(e)
    out = []
    for episode, msgs in by_episode.items():
        starts = [t for m in msgs if (t := epoch(m.get("start"))) is not None]
        if not starts:
            continue
        ends = [t for m in msgs
                if m.get("state") == "close" and (t := epoch(m.get("end"))) is not None]
        made = [t for m in msgs if (t := epoch(m.get("created"))) is not None]
        closes = [t for m in msgs
                  if m.get("state") == "close" and (t := epoch(m.get("created"))) is not None]
        tops = [m["top_channels"] for m in msgs if m.get("top_channels")]
        top = tops[-1][0].get("channel") if tops else None
        out.append(Detected(
            episode, min(starts), max(ends) if ends else None,
            min(made) if made else min(starts), max(closes) if closes else None, top,
        ))
    return sorted(out, key=lambda d: d.start)


@dataclass(frozen=True)
class Outcome:
    injected: Injected
    detection: Detected | None  # the first overlapping episode by its open message

    @property
    def delay_s(self) -> float | None:
        """Fault start to the open message; negative: the alert was already open."""
        return None if self.detection is None else self.detection.opened - self.injected.start


@dataclass(frozen=True)
class Summary:
    since: float
    until: float
    outcomes: list[Outcome]  # every injected episode in the watched period, by start
    false_alarms: list[Detected]
    episodes: list[Detected]  # every anomaly episode in the watched period

    @property
    def delays(self) -> list[float]:
        return [d for o in self.outcomes if (d := o.delay_s) is not None and d >= 0]


def summarize(
    injected: Sequence[Injected], detected: Sequence[Detected], *,
    since: float, until: float, grace_s: float,
) -> Summary:
    """Match injected episodes and anomaly episodes within ``[since, until]`` (epoch s)."""
    faults = [i for i in injected if i.start <= until and (i.end or until) >= since]
    episodes = [d for d in detected if d.reported_within(since, until)]
    outcomes = []
    matched: set[str] = set()
    for f in faults:
        hits = [d for d in episodes if d.overlaps(f.start, (f.end or until) + grace_s, until)]
        matched.update(d.episode for d in hits)
        outcomes.append(Outcome(f, min(hits, key=lambda d: d.opened) if hits else None))
    false_alarms = [d for d in episodes if d.episode not in matched]
    return Summary(since, until, outcomes, false_alarms, episodes)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [COLUMN_GAP.join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def _span(s: float) -> str:
    return _seconds(s) if s < 60 else f"{int(s // 60)} min {int(s % 60):02d} s"


def _episode_rows(episodes: Sequence[Detected]) -> list[list[str]]:
    rows = [["START", "DURATION", "EPISODE", "TOP CHANNEL"]]
    for d in episodes:
        length = "open" if d.end is None else _seconds(d.end - d.start)
        rows.append([clock(d.start), length, d.episode[:EPISODE_SHORT_CHARS], d.top_channel or "-"])
    return rows


def format_summary(s: Summary, *, truth_given: bool) -> str:
    """The summary as a few aligned lines for the terminal."""
    watched = _span(s.until - s.since)
    if not truth_given:
        head = (f"summary: watched {watched}; {len(s.episodes)} anomaly episode(s) "
                "(no --truth file, so detections and false alarms cannot be told apart)")
        return "\n".join([head, *(_table(_episode_rows(s.episodes))
                                  if s.episodes else [])])
    found = [o for o in s.outcomes if o.detection is not None]
    delay = f" (median delay {_seconds(statistics.median(s.delays))})" if s.delays else ""
    lines = [
        f"summary: watched {watched}; {len(s.outcomes)} fault(s) injected, {len(found)} "
        f"detected{delay}, {len(s.outcomes) - len(found)} missed; "
        f"{len(s.false_alarms)} false alarm(s)"
    ]
    if s.outcomes:
        rows = [["KIND", "CHANNEL", "START", "DURATION", "DETECTED", "DELAY"]]
        for o in s.outcomes:
            f, d = o.injected, o.delay_s
            rows.append([
                f.kind, f.channel, clock(f.start),
                "running" if f.end is None else _seconds(f.end - f.start),
                "no" if d is None else "yes",
                "-" if d is None else ("alert already open" if d < 0 else _seconds(d)),
            ])
        lines += _table(rows)
    if s.false_alarms:
        lines.append("false alarms (anomaly episodes overlapping no injected fault):")
        lines += _table(_episode_rows(s.false_alarms))
    return "\n".join(lines)
