"""The watch's end summary: injected faults (a truth file, read as ``simulate --truth`` writes
it, followed while it grows) against anomaly episodes (event payloads made by
``edge_agent.events.Event``): detected, delay, missed, false alarms, the watched period."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.events import (
    SEVERITY_CRITICAL,
    SEVERITY_INFO,
    ChannelShare,
    Event,
    EventState,
)
from edge_agent.watch.summary import clock, detected_episodes, format_summary, summarize
from edge_agent.watch.truth import Injected, TruthFollower, read_truth

T0 = 1_700_000_000.0  # the watch started here
GRACE_S = 64.0  # one model window


def _line(kind: str, channel: str, start: float, end: float | None) -> str:
    return json.dumps({"kind": kind, "channel": channel, "start": T0 + start,
                       "end": None if end is None else T0 + end}) + "\n"


def _truth(path: Path) -> Path:
    path.write_text("".join([
        _line("spike", "flow_m3min", -200, -195),  # before the watch: left out
        _line("level_shift", "oil_temp_c", 100, None),
        _line("level_shift", "oil_temp_c", 100, 160),
        _line("spike", "pressure_bar", 300, None),
        _line("spike", "pressure_bar", 300, 302),
        _line("noise_burst", "vibration_rms_mms", 700, None),
        _line("noise_burst", "vibration_rms_mms", 700, 710),
        _line("stuck", "flow_m3min", 900, None),
        _line("stuck", "flow_m3min", 900, 950),
        "{not json\n",
        _line("drift", "motor_current_a", 1000, None),  # still running at the end
    ]))
    return path


def _episode(ep: str, start: float, end: float | None, opened: float) -> list[dict[str, object]]:
    """The open, update (and close) messages of one episode, as payload dicts."""

    def msg(state: EventState, severity: int, created: float, end: float | None) -> Event:
        return Event(
            kind="anomaly", state=state, machine_id="m", episode=ep, start=T0 + start,
            end=end, severity=severity, stage=2, created=T0 + created,
            top_channels=(ChannelShare("oil_temp_c", 0.7),),
        )

    msgs = [msg("open", SEVERITY_CRITICAL, opened, None),
            msg("update", SEVERITY_INFO, opened + 5, None)]
    if end is not None:
        msgs.append(msg("close", SEVERITY_CRITICAL, end + 1, T0 + end))
    return [json.loads(m.to_json()) for m in msgs]


def _events() -> list[dict[str, object]]:
    return [
        *_episode("e0" * 16, -300, -250, -299),  # before the watch: left out
        *_episode("e1" * 16, 110, 170, 113),  # level_shift: 13 s after its start
        *_episode("e2" * 16, 740, 760, 742),  # noise_burst ended at 710: within one window
        *_episode("e3" * 16, 880, 960, 882),  # already open when "stuck" began at 900
        *_episode("e4" * 16, 600, 620, 603),  # overlaps nothing injected: a false alarm
        *_episode("e5" * 16, 1005, None, 1090),  # drift, still open at the end
    ]


def test_summary_matches_injected_against_detected(tmp_path: Path) -> None:
    injected = read_truth(_truth(tmp_path / "truth.jsonl"))
    detected = detected_episodes(reversed(_events()))  # any order, with updates
    assert [d.episode[:2] for d in detected] == ["e0", "e1", "e4", "e2", "e3", "e5"]
    s = summarize(injected, detected, since=T0, until=T0 + 1600, grace_s=GRACE_S)

    by_kind = {o.injected.kind: o for o in s.outcomes}
    assert list(by_kind) == ["level_shift", "spike", "noise_burst", "stuck", "drift"]
    assert by_kind["level_shift"].delay_s == pytest.approx(13.0)
    assert by_kind["spike"].detection is None
    assert by_kind["noise_burst"].delay_s == pytest.approx(42.0)
    assert by_kind["stuck"].delay_s == pytest.approx(-18.0)  # the alert was already open
    assert by_kind["drift"].delay_s == pytest.approx(90.0)
    assert [d.episode[:2] for d in s.false_alarms] == ["e4"]
    assert s.delays == pytest.approx([13.0, 42.0, 90.0])

    text = format_summary(s, truth_given=True).splitlines()
    assert text[0] == ("summary: watched 26 min 40 s; 5 fault(s) injected, 4 detected (median "
                       "delay 42 s), 1 missed; 1 false alarm(s)")
    header = text[1]
    assert header.split() == ["KIND", "CHANNEL", "START", "DURATION", "DETECTED", "DELAY"]
    rows = {line.split()[0]: line for line in text[2:7]}
    # Aligned: every row's cells start where the header's do.
    for col in ("CHANNEL", "START", "DURATION", "DETECTED"):
        at = header.index(col)
        assert all(r[at - 2 : at] == "  " and r[at] != " " for r in rows.values()), col
    assert rows["level_shift"].split()[1:] == [
        "oil_temp_c", clock(T0 + 100), "60", "s", "yes", "13", "s"]
    assert rows["spike"].split()[1:] == ["pressure_bar", clock(T0 + 300), "2.0", "s", "no", "-"]
    assert rows["stuck"].endswith("yes       alert already open")
    assert rows["drift"].split()[3:] == ["running", "yes", "90", "s"]
    assert text[7] == "false alarms (anomaly episodes overlapping no injected fault):"
    assert text[8].split() == ["START", "DURATION", "EPISODE", "TOP", "CHANNEL"]
    assert text[9].split() == [clock(T0 + 600), "20", "s", "e4e4e4e4", "oil_temp_c"]


def test_a_short_grace_makes_a_late_episode_a_false_alarm(tmp_path: Path) -> None:
    injected = read_truth(_truth(tmp_path / "truth.jsonl"))
    s = summarize(injected, detected_episodes(_events()), since=T0, until=T0 + 1600,
                  grace_s=10.0)
    noise = next(o for o in s.outcomes if o.injected.kind == "noise_burst")
    assert noise.detection is None
    assert [d.episode[:2] for d in s.false_alarms] == ["e4", "e2"]


def test_without_truth_the_episodes_are_listed() -> None:
    s = summarize([], detected_episodes(_events()), since=T0, until=T0 + 1600, grace_s=GRACE_S)
    text = format_summary(s, truth_given=False).splitlines()
    assert text[0].startswith("summary: watched 26 min 40 s; 5 anomaly episode(s) (no --truth file")
    assert [line.split()[-2] for line in text[2:]] == [
        "e1e1e1e1", "e4e4e4e4", "e2e2e2e2", "e3e3e3e3", "e5e5e5e5"]
    assert text[-1].split()[1:] == ["open", "e5e5e5e5", "oil_temp_c"]
    assert text[2].split()[1:3] == ["60", "s"]


def test_truth_follower_reads_complete_lines_as_the_file_grows(tmp_path: Path) -> None:
    path = tmp_path / "truth.jsonl"
    follower = TruthFollower(path)
    assert follower.poll() == []  # the simulator has not started yet
    line = _line("spike", "pressure_bar", 10, None)
    with path.open("a") as f:
        f.write(line[:20])  # half a line, as a reader may catch a write
    assert follower.poll() == []
    with path.open("a") as f:
        f.write(line[20:] + "[1, 2]\n")
    assert follower.poll() == [Injected("spike", "pressure_bar", T0 + 10, None)]
    assert follower.malformed == 1
    assert follower.active(T0 + 11) == [Injected("spike", "pressure_bar", T0 + 10, None)]
    with path.open("a") as f:
        f.write(_line("spike", "pressure_bar", 10, 12))
    assert follower.poll() == [Injected("spike", "pressure_bar", T0 + 10, T0 + 12)]
    assert follower.episodes == [Injected("spike", "pressure_bar", T0 + 10, T0 + 12)]
    assert follower.active(T0 + 13) == []


@pytest.mark.parametrize(("text", "why"), [
    ('{"kind": "spike", "channel": "x", "start": 1}', "missing key 'end'"),
    ('{"kind": "spike", "channel": "x", "start": "soon", "end": null}', "start must be"),
    ('{"kind": "spike", "channel": 3, "start": 1, "end": null}', "must be strings"),
    ('{"kind": "spike", "channel": "x", "start": 1, "end": true}', "end must be"),
])
def test_a_malformed_truth_line_is_logged_with_its_number(
    tmp_path: Path, text: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "truth.jsonl"
    path.write_text(_line("spike", "x", 1, 2) + text + "\n")
    assert read_truth(path) == [Injected("spike", "x", T0 + 1, T0 + 2)]
    assert f"{path}:2: skipped a truth line: " in caplog.text
    assert why in caplog.text
