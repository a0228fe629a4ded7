"""The live view's drawing (``edge_agent.watch.render``) on a recorded moment of an agent.

The moment is real data, not hand-made numbers: the exposition text of an ``AgentMetrics``
(counters advanced, the latest window recorded) parsed by the view's own scraper, events made
by ``edge_agent.events.Event`` and a status message from ``edge_agent.deliver.status``. Both
modes are checked: the terminal screen (bars, numbers, event lines, size) and the plain lines.
"""

from __future__ import annotations

import json
import time

import pytest
from metrics_support import sample_snapshot
from prometheus_client import generate_latest

from edge_agent.deliver.status import status_payload
from edge_agent.events import SEVERITY_CRITICAL, SEVERITY_WARNING, ChannelShare, Event
from edge_agent.health import LatestWindow
from edge_agent.metrics import AgentMetrics
from edge_agent.watch.follow import SeenEvent, SeenStatus
from edge_agent.watch.render import (
    ASCII,
    SCORE_HALF_CELLS,
    SCREEN_WIDTH,
    UNICODE,
    bar,
    event_line,
    screen,
    status_line,
    truth_line,
)
from edge_agent.watch.scrape import parse_metrics
from edge_agent.watch.state import Frame, ViewState
from edge_agent.watch.summary import clock
from edge_agent.watch.truth import Injected

NOW = 1_700_000_000.0
TOPIC = "edge/test-machine/events"
SCREEN_LINES = 25


class _Feed:
    """The recorded feed: where events came from, the view's link and the retained status."""

    where = TOPIC
    connected = True
    problem = None

    def __init__(self, status: SeenStatus | None) -> None:
        self.status = status

    def start(self) -> None: ...

    def poll(self) -> list[SeenEvent]:
        return []

    def stop(self) -> None: ...


def _scraped_text(rows: int) -> str:
    """What the agent's /metrics served: sample_snapshot (channels pressure_bar and
    oil_temp_c, the latter faulty; outbox 3; MQTT connected), with counters advanced and a
    stage-2 window at 1.5 x the threshold, 75 % of its error from oil_temp_c."""
    m = AgentMetrics(sample_snapshot)
    m.rows.inc(rows)
    m.windows.inc(1200)
    m.stage2.inc(60)
    m.latest = LatestWindow(score_ratio=1.5, alert=True, shares=(0.25, 0.75))
    return generate_latest(m.registry).decode()


def _events() -> list[SeenEvent]:
    anomaly = Event(
        kind="anomaly", state="open", machine_id="test-machine", episode="3f2a1b9c" + "0" * 24,
        start=NOW - 20, end=None, severity=SEVERITY_CRITICAL, p_anomaly=0.99912, stage=2,
        peak_score=0.8, top_channels=(ChannelShare("oil_temp_c", 0.75),
                                      ChannelShare("pressure_bar", 0.25)),
        created=NOW - 18,
    )
    fault = Event(
        kind="sensor_fault", state="open", machine_id="test-machine", episode="77aa" + "1" * 28,
        start=NOW - 10, end=None, severity=SEVERITY_WARNING, channel="oil_temp_c",
        reason="stale", created=NOW - 9,
    )
    return [SeenEvent(TOPIC, NOW - 18, json.loads(anomaly.to_json())),
            SeenEvent(TOPIC, NOW - 9, json.loads(fault.to_json()))]


@pytest.fixture
def state() -> ViewState:
    s = ViewState()
    s.add_reading(parse_metrics(_scraped_text(100), at=10.0))
    s.add_reading(parse_metrics(_scraped_text(104), at=12.0))  # 4 more rows in 2 s
    for e in _events():
        s.add_event(e)
    return s


def _frame(
    state: ViewState, *, truth: bool = True, broker: str | None = "127.0.0.1:1883"
) -> Frame:
    status = SeenStatus(NOW - 3, json.loads(status_payload("online", "test-machine")))
    status.data["time"] = "2023-11-14T22:13:17.000Z"  # NOW - 3 s
    injecting = [Injected("level_shift", "oil_temp_c", NOW - 12, None)] if truth else None
    return state.frame(
        _Feed(status), now=NOW, machine_id="test-machine", elapsed_s=75.0, limit_s=600.0,
        metrics_url="http://127.0.0.1:9108/metrics", broker=broker, injecting=injecting,
    )


def test_bar_fills_in_eighths_and_clips() -> None:
    assert bar(0.5, 4, UNICODE) == "██░░"
    assert bar(0.3, 2, UNICODE) == "▌░"  # 0.6 of a cell: four eighths
    assert bar(1.7, 3, UNICODE) == "███"
    assert bar(-1.0, 3, UNICODE) == "░░░"
    assert bar(0.3, 2, ASCII) == ".."  # whole cells only
    assert bar(0.75, 4, ASCII) == "###."


def test_terminal_screen_shows_the_moment(state: ViewState) -> None:
    lines = screen(_frame(state))
    text = "\n".join(lines)
    assert len(lines) <= SCREEN_LINES
    assert all(len(line) <= SCREEN_WIDTH for line in lines)
    assert lines[0].startswith("edge_agent watch · test-machine · model m-1 · ")
    assert lines[0].endswith("1:15 of 10:00")
    agent = next(line for line in lines if line.startswith("agent"))
    assert "rows/s 2.0" in agent
    assert "windows 1,200" in agent
    assert "stage 2 5.0%" in agent
    assert "outbox 3" in agent
    assert "agent MQTT connected" in agent
    assert "]  1.50" not in text
    # 1.5 x threshold: the half up to the threshold full, the half beyond it half full.
    score = next(line for line in lines if line.startswith("score"))
    half = SCORE_HALF_CELLS // 2
    assert f"[{'█' * SCORE_HALF_CELLS}│{'█' * half}{'░' * half}]" in score
    assert "1.50 × threshold" in score
    assert "alert ALERT" in score
    oil = next(line for line in lines if line.strip().startswith("oil_temp_c"))
    assert "[" + "█" * 15 + "░" * 5 + "]" in oil
    assert oil.endswith(" 75%")
    pressure = next(line for line in lines if line.strip().startswith("pressure_bar"))
    assert pressure.endswith(" 25%")
    opened = next(line for line in lines if line.startswith("open"))
    assert f"anomaly 3f2a1b9c (oil_temp_c) since {clock(NOW - 18)}" in opened
    assert "sensor faults: oil_temp_c" in opened
    assert "level_shift on oil_temp_c for 12 s" in text
    assert (f"status    edge/test-machine/status (retained): online, heartbeat "
            f"{clock(NOW - 3)} (3 s ago)") in lines
    assert f"events on {TOPIC} (subscribed on 127.0.0.1:1883)" in lines
    assert (f"  {clock(NOW - 18)} anomaly open 3f2a1b9c p_anomaly 0.9991 "
            "channels oil_temp_c 75%, pressure_bar 25%") in lines
    assert f"  {clock(NOW - 9)} sensor_fault open 77aa1111 oil_temp_c stale" in lines


def test_screen_fits_a_narrow_terminal_and_an_ascii_one(state: ViewState) -> None:
    lines = screen(_frame(state), glyphs=ASCII, width=60)
    assert all(len(line) <= 60 for line in lines)
    assert all(line.isascii() for line in lines)
    score = next(line for line in lines if line.startswith("score"))
    assert "[" + "#" * SCORE_HALF_CELLS + "|" + "#" * 10 + "." * 10 + "]" in score


def test_without_broker_or_truth_the_screen_says_events_stay_local(state: ViewState) -> None:
    lines = screen(_frame(state, truth=False, broker=None))
    assert "upstream  no [mqtt] in the config: events stay local" in lines
    assert f"events in the local store {TOPIC}" in lines  # the feed names its source
    assert not any(line.startswith("injecting") for line in lines)
    assert not any(line.startswith("status") for line in lines)


def test_screen_before_the_agent_answers() -> None:
    s = ViewState()
    s.scrape_failed("http://127.0.0.1:9108/metrics: Connection refused")
    lines = screen(_frame(s))
    assert ("agent     cannot read http://127.0.0.1:9108/metrics: Connection refused "
            "(retrying)") in lines
    assert not any(line.startswith("score") for line in lines)
    assert "  (none yet)" in lines


def test_plain_lines(state: ViewState) -> None:
    line = status_line(_frame(state))
    assert line.startswith(clock(NOW) + " rows/s 2.0 windows 1200 stage2 5.0% score 1.50x ")
    for part in ("alert on", "outbox 3", "agent_mqtt connected", "open 1",
                 "sensor_faults oil_temp_c", "status online", "injecting level_shift/oil_temp_c"):
        assert part in line
    assert "\n" not in line
    assert line.isascii()
    anomaly, fault = _events()
    assert event_line(anomaly) == (
        f"{clock(NOW - 18)} event {TOPIC} anomaly open 3f2a1b9c p_anomaly 0.9991 "
        "channels oil_temp_c 75%, pressure_bar 25%"
    )
    assert event_line(fault).endswith(f"event {TOPIC} sensor_fault open 77aa1111 oil_temp_c stale")
    started = Injected("spike", "pressure_bar", NOW - 2, None)
    ended = Injected("spike", "pressure_bar", NOW - 62, NOW - 2)
    assert truth_line(started, NOW).endswith(
        f"injecting spike on pressure_bar (started {clock(NOW - 2)})")
    assert truth_line(ended, NOW).endswith("injected spike on pressure_bar ended after 60 s")


def test_a_closed_episode_is_no_longer_open(state: ViewState) -> None:
    anomaly = _events()[0]
    closing = {**anomaly.data, "state": "close", "end": anomaly.data["start"], "id": "x"}
    state.add_event(SeenEvent(TOPIC, time.time(), closing))
    line = status_line(_frame(state))
    assert "open 0" in line


def test_rows_per_second_spans_the_last_seconds_and_restarts_with_the_agent() -> None:
    s = ViewState()
    text = {n: _scraped_text(n) for n in (5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 3)}
    for i in range(11):  # a 1 Hz agent, scraped once a second: rows 5..15 at 0..10 s
        s.add_reading(parse_metrics(text[5 + i], at=float(i)))
    assert s.rows_per_s == pytest.approx(1.0)
    # A scrape 0.3 s later, before the next row: still about 1 row/s over the last 10 s
    # (from the reading at 1 s: rows 6 to 15 in 9.3 s), where two scrapes alone say 0.
    s.add_reading(parse_metrics(text[15], at=10.3))
    assert s.rows_per_s == pytest.approx(9 / 9.3)
    s.add_reading(parse_metrics(text[3], at=11.0))  # the counter went back: a new agent
    assert s.rows_per_s is None
    s.scrape_failed("gone")
    assert s.rows_per_s is None
