"""Drawing the live view: a screen redrawn in place on a terminal, plain lines elsewhere.

Pure functions of a :class:`~edge_agent.watch.state.Frame`: :func:`screen` gives the lines of
one terminal frame (at most :data:`SCREEN_WIDTH` columns and about 25 lines; ``run`` moves the
cursor home and overwrites them, no curses needed), :func:`status_line` the one log line the
non-terminal mode prints every few seconds, and :func:`event_line` / :func:`truth_line` one
line per event seen or fault injected. Bars use Unicode block characters on a terminal that
can show them and ASCII otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.watch.follow import SeenEvent, SeenStatus
from edge_agent.watch.state import Frame, OpenEpisode
from edge_agent.watch.summary import EPISODE_SHORT_CHARS, clock, epoch
from edge_agent.watch.truth import Injected

SCREEN_WIDTH = 100  # columns
SCORE_HALF_CELLS = 20  # bar cells from 0 to the alert threshold (and again to twice it)
SHARE_CELLS = 20  # bar cells for a channel's whole error
MAX_CHANNEL_ROWS = 8  # more channels than this: the largest shares are shown
CHANNEL_NAME_CHARS = 20
TOP_CHANNELS_SHOWN = 3
LABEL_CHARS = 10  # the left column ("agent", "score", "injecting", ...)


@dataclass(frozen=True)
class Glyphs:
    full: str
    eighths: str  # partly filled cells, 1/8 to 7/8; empty: whole cells only
    empty: str
    mark: str  # the alert threshold on the score bar
    over: str  # the score is beyond the bar's end
    sep: str
    times: str


UNICODE = Glyphs("█", "▏▎▍▌▋▊▉", "░", "│", "▶", " · ", "×")
ASCII = Glyphs("#", "", ".", "|", ">", " - ", "x")


def bar(fraction: float, cells: int, g: Glyphs) -> str:
    """``fraction`` (clipped to 0..1) of ``cells`` filled, in eighths where the glyphs allow."""
    filled = min(max(fraction, 0.0), 1.0) * cells
    whole = int(filled)
    if whole >= cells:
        return g.full * cells
    eighth = int((filled - whole) * 8) if g.eighths else 0
    part = g.eighths[eighth - 1] if eighth else g.empty
    return g.full * whole + part + g.empty * (cells - whole - 1)


def score_bar(ratio: float, g: Glyphs) -> str:
    """Score / threshold on a bar from 0 to twice the threshold, the threshold marked."""
    over = g.over if ratio > 2 else ""
    return f"[{bar(ratio, SCORE_HALF_CELLS, g)}{g.mark}{bar(ratio - 1, SCORE_HALF_CELLS, g)}]{over}"


def _duration(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 60}:{s % 60:02d}"


def event_text(data: Mapping[str, Any]) -> str:
    """The compact line of one event's JSON: kind, state, episode, and what it is about."""
    kind, state = str(data.get("kind", "?")), str(data.get("state", "?"))
    parts = [kind, state, str(data.get("episode", ""))[:EPISODE_SHORT_CHARS]]
    if kind == "sensor_fault":
        parts += [str(data.get("channel", "?")), str(data.get("reason", ""))]
    else:
        p = data.get("p_anomaly")
        if isinstance(p, int | float):
            parts.append(f"p_anomaly {p:.4f}")
        tops = [
            f"{c.get('channel', '?')} {c.get('share', 0.0):.0%}"
            for c in data.get("top_channels", [])[:TOP_CHANNELS_SHOWN]
            if isinstance(c, dict)
        ]
        if tops:
            parts.append("channels " + ", ".join(tops))
    return " ".join(p for p in parts if p)


def event_line(e: SeenEvent) -> str:
    """A plain log line for one event, with the topic it came on."""
    return f"{clock(e.received)} event {e.topic} {event_text(e.data)}"


def truth_line(rec: Injected, now: float) -> str:
    if rec.end is None:
        return f"{clock(now)} injecting {rec.kind} on {rec.channel} (started {clock(rec.start)})"
    length = rec.end - rec.start
    return f"{clock(now)} injected {rec.kind} on {rec.channel} ended after {length:.0f} s"


def _status_text(st: SeenStatus | None, now: float) -> str:
    if st is None:
        return "nothing retained yet"
    state = str(st.data.get("state", "?"))
    if state != "online":
        reason = st.data.get("reason")
        return f"{state}" + (f" ({reason})" if reason else "")
    at = epoch(st.data.get("time")) or st.received
    return f"online, heartbeat {clock(at)} ({max(0.0, now - at):.0f} s ago)"


def _agent_line(f: Frame, g: Glyphs) -> str:
    r = f.reading
    if f.scrape_problem is not None or r is None:
        return f"cannot read {f.scrape_problem or f.metrics_url} (retrying)"
    rate = "-" if f.rows_per_s is None else f"{f.rows_per_s:.1f}"
    link = "not configured" if f.broker is None else (
        "connected" if r.mqtt_connected else "DISCONNECTED")
    return g.sep.join([
        f"rows/s {rate}", f"windows {r.windows:,.0f}", f"stage 2 {r.stage2_share:.1%}",
        f"outbox {r.outbox_depth:.0f}", f"agent MQTT {link}",
    ])


def _channel_rows(shares: Mapping[str, float], g: Glyphs) -> list[str]:
    if not any(shares.values()):
        return ["  (no window has reached stage 2 yet)"]
    names = list(shares)
    if len(names) > MAX_CHANNEL_ROWS:
        names = sorted(names, key=lambda ch: -shares[ch])[:MAX_CHANNEL_ROWS]
    return [
        f"  {ch[:CHANNEL_NAME_CHARS]:<{CHANNEL_NAME_CHARS}} [{bar(shares[ch], SHARE_CELLS, g)}]"
        f" {shares[ch]:4.0%}"
        for ch in names
    ]


def _open_text(episodes: list[OpenEpisode], faulty: list[str], g: Glyphs) -> str:
    anomalies = [
        f"anomaly {o.episode[:EPISODE_SHORT_CHARS]} ({o.detail}) since {clock(o.since)}"
        for o in episodes if o.kind == "anomaly"
    ]
    return g.sep.join([
        ", ".join(anomalies) or "no anomaly episode",
        f"sensor faults: {', '.join(faulty) or 'none'}",
    ])


def _injecting_text(injecting: list[Injected], now: float) -> str:
    if not injecting:
        return "nothing now (normal operation)"
    return ", ".join(
        f"{i.kind} on {i.channel} for {now - i.start:.0f} s" for i in injecting
    )


def _label(name: str, text: str) -> str:
    return f"{name:<{LABEL_CHARS}}{text}"


def screen(f: Frame, *, glyphs: Glyphs = UNICODE, width: int = SCREEN_WIDTH) -> list[str]:
    """One terminal frame, each line at most ``width`` columns."""
    g = glyphs
    r = f.reading
    limit = "" if f.limit_s is None else f" of {_duration(f.limit_s)}"
    model = f"model {r.model_version}" if r is not None and r.model_version else "model ?"
    lines = [
        g.sep.join(["edge_agent watch", f.machine_id, model, clock(f.now),
                    f"{_duration(f.elapsed_s)}{limit}"]),
        _label("agent", _agent_line(f, g)),
    ]
    if r is not None:
        alert = "ALERT" if r.alert else "off"
        ratio = f"{r.score_ratio:.2f} {g.times} threshold"
        lines.append(_label("score", f"{score_bar(r.score_ratio, g)} {ratio}{g.sep}alert {alert}"))
        lines.append("error share per channel (latest stage-2 window):")
        lines += _channel_rows(r.shares, g)
    lines.append(_label("open", _open_text(f.open_episodes, f.faulty, g)))
    if f.injecting is not None:
        lines.append(_label("injecting", _injecting_text(f.injecting, f.now)))
    if f.broker is None:
        lines.append(_label("upstream", "no [mqtt] in the config: events stay local"))
        heading = f"events in the local store {f.events_where}"
    else:
        status_topic = f.events_where.rsplit("/", 1)[0] + "/status"
        lines.append(_label("status", f"{status_topic} (retained): "
                                      f"{_status_text(f.status, f.now)}"))
        link = "subscribed" if f.feed_connected else "not connected"
        heading = f"events on {f.events_where} ({link} on {f.broker})"
    if f.feed_problem:
        heading += f"{g.sep}{f.feed_problem}"
    lines.append(heading)
    lines += [f"  {clock(e.received)} {event_text(e.data)}" for e in f.recent] or [
        "  (none yet)"
    ]
    lines.append("Ctrl-C ends the view and prints the summary")
    return [line[:width] for line in lines]


def status_line(f: Frame) -> str:
    """The plain mode's periodic line: the same facts as the screen, on one line."""
    r = f.reading
    parts = [clock(f.now)]
    if f.scrape_problem is not None or r is None:
        parts.append(f"agent metrics unavailable: {f.scrape_problem or f.metrics_url}")
    else:
        rate = "-" if f.rows_per_s is None else f"{f.rows_per_s:.1f}"
        link = "none" if f.broker is None else (
            "connected" if r.mqtt_connected else "disconnected")
        parts += [
            f"rows/s {rate}", f"windows {r.windows:.0f}", f"stage2 {r.stage2_share:.1%}",
            f"score {r.score_ratio:.2f}x", f"alert {'on' if r.alert else 'off'}",
            f"outbox {r.outbox_depth:.0f}", f"agent_mqtt {link}",
        ]
    anomalies = sum(1 for o in f.open_episodes if o.kind == "anomaly")
    parts += [f"open {anomalies}", f"sensor_faults {','.join(f.faulty) or '-'}"]
    if f.broker is not None:
        state = "-" if f.status is None else str(f.status.data.get("state", "?"))
        parts.append(f"status {state}")
    if f.injecting is not None:
        now = ",".join(f"{i.kind}/{i.channel}" for i in f.injecting) or "-"
        parts.append(f"injecting {now}")
    return " ".join(parts)
