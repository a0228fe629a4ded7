"""What the live view knows at any moment, gathered from its three inputs.

``edge_agent.watch.run`` feeds :class:`ViewState` once a second with a scrape of the agent's
``/metrics`` (``scrape``), the events that arrived (``follow``) and the truth file's new lines
(``truth``); :meth:`ViewState.frame` freezes it into a :class:`Frame` for the renderer
(``render``). Rates come from the difference of two scrapes on the monotonic clock, so a
wall-clock step does not make a spike of rows per second; they span the last
:data:`RATE_WINDOW_S`, so the rate does not flicker between scrapes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from edge_agent.watch.follow import EventFeed, SeenEvent, SeenStatus
from edge_agent.watch.scrape import AgentReading
from edge_agent.watch.truth import Injected

RECENT_EVENTS = 6  # event lines the screen keeps
# Rows per second over this much history: a 1 Hz agent scraped about once a second would
# otherwise read 0 or 2 rows/s whenever a scrape lands just before or after a row.
RATE_WINDOW_S = 10.0


@dataclass(frozen=True)
class OpenEpisode:
    """An episode whose ``open`` the view has seen and whose ``close`` it has not."""

    kind: str
    episode: str
    since: float  # epoch s when its open arrived
    detail: str  # the channel (sensor fault) or the top channel (anomaly)


@dataclass(frozen=True)
class Frame:
    """Everything one screen (or one plain status line) shows."""

    now: float  # epoch s
    machine_id: str
    elapsed_s: float
    limit_s: float | None  # how long the view runs; None: until stopped
    metrics_url: str
    reading: AgentReading | None
    rows_per_s: float | None  # None until two scrapes are in
    scrape_problem: str | None
    open_episodes: list[OpenEpisode]
    faulty: list[str]  # channels in a sensor fault
    events_where: str  # the events topic, or the local store's path
    broker: str | None  # host:port the view subscribes on; None: no [mqtt]
    feed_connected: bool | None
    feed_problem: str | None
    status: SeenStatus | None
    recent: list[SeenEvent]  # oldest first
    injecting: list[Injected] | None  # None: no --truth given


class ViewState:
    """The view's memory between refreshes."""

    def __init__(self) -> None:
        self.reading: AgentReading | None = None
        self.rows_per_s: float | None = None
        self._rows: deque[tuple[float, float]] = deque()  # (monotonic s, rows) in the window
        self.scrape_problem: str | None = None
        self.events: list[SeenEvent] = []  # every event seen, for the summary
        self.recent: deque[SeenEvent] = deque(maxlen=RECENT_EVENTS)
        self.open: dict[str, OpenEpisode] = {}

    def add_reading(self, r: AgentReading) -> None:
        if self._rows and r.rows < self._rows[-1][1]:
            self._rows.clear()  # the agent restarted: its counters began again
        self._rows.append((r.at, r.rows))
        while r.at - self._rows[0][0] > RATE_WINDOW_S:
            self._rows.popleft()
        t0, rows0 = self._rows[0]
        self.rows_per_s = (r.rows - rows0) / (r.at - t0) if r.at > t0 else None
        self.reading = r
        self.scrape_problem = None

    def scrape_failed(self, problem: str) -> None:
        self.scrape_problem = problem
        self.rows_per_s = None
        self._rows.clear()

    def add_event(self, e: SeenEvent) -> None:
        self.events.append(e)
        self.recent.append(e)
        if e.state == "close":
            self.open.pop(e.episode, None)
        elif e.state == "open":
            self.open[e.episode] = OpenEpisode(e.kind, e.episode, e.received, _about(e))

    def frame(
        self, feed: EventFeed, *, now: float, machine_id: str, elapsed_s: float,
        limit_s: float | None, metrics_url: str, broker: str | None,
        injecting: list[Injected] | None,
    ) -> Frame:
        return Frame(
            now=now, machine_id=machine_id, elapsed_s=elapsed_s, limit_s=limit_s,
            metrics_url=metrics_url, reading=self.reading, rows_per_s=self.rows_per_s,
            scrape_problem=self.scrape_problem,
            open_episodes=sorted(self.open.values(), key=lambda o: o.since),
            faulty=self.faulty(),
            events_where=feed.where, broker=broker, feed_connected=feed.connected,
            feed_problem=feed.problem, status=feed.status, recent=list(self.recent),
            injecting=injecting,
        )

    def faulty(self) -> list[str]:
        """Channels in a sensor fault: the agent's gauge when it can be read, else the
        sensor_fault episodes the view saw open."""
        if self.reading is not None and self.scrape_problem is None:
            return self.reading.faulty
        return [o.detail for o in self.open.values() if o.kind == "sensor_fault"]


def _about(e: SeenEvent) -> str:
    if e.kind == "sensor_fault":
        return str(e.data.get("channel", "?"))
    tops = e.data.get("top_channels") or [{}]
    return str(tops[0].get("channel", "?"))
