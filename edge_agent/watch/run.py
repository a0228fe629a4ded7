"""``python -m edge_agent watch``: the live view of a running agent, and its end summary.

Once a second the view scrapes the agent's ``/metrics`` (``scrape``), takes the events that
arrived over MQTT or in the local store (``follow``) and the truth file's new lines
(``truth``), and shows them (``render``): on a terminal, one screen redrawn in place (cursor
home, each line cleared to its end; no curses); otherwise a plain status line every
:data:`PLAIN_STATUS_EVERY_S` and one line per event or injected fault, for logs and pipes.
``--record`` writes the timeline as JSON lines (``record``) for ``trainer.demo_plot``.

It runs for ``--minutes`` or until SIGINT/SIGTERM, then prints the summary (``summary``):
injected faults against detected anomaly episodes, with delays. Nothing here stops the view
on a fault of its inputs: an agent not up yet, a broker away, a truth file not written yet
are shown and retried.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO

from edge_agent.agent import EVENTS_DB
from edge_agent.config.model import AgentConfig
from edge_agent.deliver.outbox import read_recent
from edge_agent.errors import ConfigError, EdgeAnomalyError
from edge_agent.watch.follow import EventFeed, LocalFeed, MqttFeed
from edge_agent.watch.record import Recorder, record_line
from edge_agent.watch.render import (
    ASCII,
    SCREEN_WIDTH,
    UNICODE,
    Glyphs,
    event_line,
    screen,
    status_line,
    truth_line,
)
from edge_agent.watch.scrape import MetricsReader, ScrapeError
from edge_agent.watch.state import Frame, ViewState
from edge_agent.watch.summary import detected_episodes, format_summary, summarize
from edge_agent.watch.truth import TruthFollower

log = logging.getLogger("edge_agent.watch")

REFRESH_S = 1.0  # screen refresh and scrape period
PLAIN_STATUS_EVERY_S = 10.0  # plain mode: one status line this often
# A fault still shows in windows until they have slid past it; without the model's window
# length (bundle unreadable) the summary allows this much after a fault ends.
DEFAULT_GRACE_S = 60.0
SUMMARY_STORE_LIMIT = 50_000  # stored events the summary reads at most

HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
CLEAR_SCREEN, HOME, CLEAR_TO_EOL, CLEAR_BELOW = "\x1b[2J", "\x1b[H", "\x1b[K", "\x1b[J"
METRICS_DISABLED = "metrics are disabled in the config ([metrics] enabled = false)"


def _glyphs(out: IO[str]) -> Glyphs:
    encoding = getattr(out, "encoding", None) or "ascii"
    try:
        (UNICODE.full + UNICODE.eighths + UNICODE.empty + UNICODE.mark + UNICODE.sep).encode(
            encoding
        )
    except (UnicodeEncodeError, LookupError):
        return ASCII
    return UNICODE


def _recorder(path: Path) -> Recorder:
    try:
        return Recorder(path)
    except OSError as err:
        raise ConfigError(f"--record {path}: cannot create it: {err.strerror or err}") from err


class Watch:
    """One run of the view. ``tty`` picks the in-place screen (else plain lines)."""

    def __init__(
        self, cfg: AgentConfig, *, out: IO[str], tty: bool, truth: Path | None = None,
        minutes: float | None = None, record: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = out
        self.tty = tty
        self.glyphs = _glyphs(out) if tty else ASCII
        self.limit_s = None if minutes is None else minutes * 60.0
        self.started = time.time()
        self.stop_requested = threading.Event()
        self.state = ViewState()
        self.reader = MetricsReader(cfg.metrics) if cfg.metrics.enabled else None
        self.store = cfg.state_dir / EVENTS_DB
        self.feed: EventFeed = (
            MqttFeed(cfg.mqtt, cfg.machine_id) if cfg.mqtt is not None
            else LocalFeed(self.store, since=self.started)
        )
        self.broker = None if cfg.mqtt is None else f"{cfg.mqtt.host}:{cfg.mqtt.port}"
        self.truth = None if truth is None else TruthFollower(truth)
        self.recorder = None if record is None else _recorder(record)
        self._next_status = 0.0
        self._said_rate = False

    @property
    def metrics_url(self) -> str:
        return METRICS_DISABLED if self.reader is None else self.reader.url

    def install_signal_handlers(self) -> None:
        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run(self) -> int:
        """Show the view until the time is up or a stop is asked for; print the summary."""
        self.feed.start()
        if self.tty:
            self._write(HIDE_CURSOR + CLEAR_SCREEN)
        else:
            where = self.broker or "the local store (no [mqtt] in the config: events stay local)"
            self._write(f"watching {self.cfg.machine_id}: metrics {self.metrics_url}, events "
                        f"from {where}\n")
        try:
            t0 = time.monotonic()
            while not self.stop_requested.is_set():
                self._tick(time.monotonic() - t0)
                if self.limit_s is not None and time.monotonic() - t0 >= self.limit_s:
                    break
                wait = REFRESH_S
                if self.limit_s is not None:
                    wait = min(wait, max(0.0, t0 + self.limit_s - time.monotonic()))
                self.stop_requested.wait(wait)
        finally:
            self.feed.stop()
            if self.recorder is not None:
                self.recorder.close()
            if self.tty:
                self._write(SHOW_CURSOR)
        if not self.tty:
            self._write(status_line(self._frame(time.time() - self.started)) + "\n")
        self._write("\n" + self.summary() + "\n")
        return 0

    # -- one refresh -------------------------------------------------------------------------
    def _tick(self, elapsed_s: float) -> None:
        now = time.time()
        fresh = self._scrape()
        events = self.feed.poll()
        for e in events:
            self.state.add_event(e)
        injected = self.truth.poll() if self.truth is not None else []
        if self.recorder is not None:
            self.recorder.write(record_line(
                now, self.state.reading if fresh else None, self.state.rows_per_s, events
            ))
        frame = self._frame(elapsed_s)
        if self.tty:
            cols = shutil.get_terminal_size((SCREEN_WIDTH, 25)).columns
            lines = screen(frame, glyphs=self.glyphs, width=min(SCREEN_WIDTH, cols))
            self._write(HOME + "".join(f"{line}{CLEAR_TO_EOL}\n" for line in lines) + CLEAR_BELOW)
            return
        out = [truth_line(i, now) for i in injected] + [event_line(e) for e in events]
        first_rate = self.state.rows_per_s is not None and not self._said_rate
        if first_rate or elapsed_s >= self._next_status:
            self._said_rate = self._said_rate or first_rate
            self._next_status = elapsed_s + PLAIN_STATUS_EVERY_S
            out.append(status_line(frame))
        if out:
            self._write("".join(f"{line}\n" for line in out))

    def _scrape(self) -> bool:
        if self.reader is None:
            self.state.scrape_failed(METRICS_DISABLED)
            return False
        try:
            self.state.add_reading(self.reader.read(time.monotonic()))
        except ScrapeError as err:
            self.state.scrape_failed(str(err))
            return False
        return True

    def _frame(self, elapsed_s: float) -> Frame:
        now = time.time()
        return self.state.frame(
            self.feed, now=now, machine_id=self.cfg.machine_id, elapsed_s=elapsed_s,
            limit_s=self.limit_s, metrics_url=self.metrics_url, broker=self.broker,
            injecting=None if self.truth is None else self.truth.active(now),
        )

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    # -- the end -----------------------------------------------------------------------------
    def summary(self) -> str:
        """Injected against detected over the watched period; the stored events join those
        seen live (the view may have started after an episode opened, or missed messages
        while the broker was away)."""
        events = {e.id: e.data for e in self.state.events}
        try:
            for r in read_recent(self.store, SUMMARY_STORE_LIMIT, "anomaly"):
                events.setdefault(r.event_id, r.data())
        except EdgeAnomalyError as err:
            log.debug("summary from the events seen only: %s", err)
        s = summarize(
            [] if self.truth is None else self.truth.episodes,
            detected_episodes(events.values()),
            since=self.started, until=time.time(),
            grace_s=DEFAULT_GRACE_S if self.truth is None else self._grace_s(),
        )
        return format_summary(s, truth_given=self.truth is not None)

    def _grace_s(self) -> float:
        """One model window, from the bundle's verified manifest."""
        from edge_agent.bundle.verify import verify_bundle

        bundle = self.cfg.model.bundle
        try:
            if bundle is None:
                raise EdgeAnomalyError("[model] bundle is not set")
            m = verify_bundle(bundle, self.cfg.model.trusted_keys).manifest
        except EdgeAnomalyError as err:
            log.warning("summary: allowing %.0f s after each fault for its detection, not one "
                        "model window: %s", DEFAULT_GRACE_S, err)
            return DEFAULT_GRACE_S
        return m.window.length * m.sampling.period_s


def run_watch(
    cfg: AgentConfig, *, out: IO[str], tty: bool, truth: Path | None = None,
    minutes: float | None = None, record: Path | None = None,
) -> int:
    """``edge_agent watch``: returns the exit code."""
    watch = Watch(cfg, out=out, tty=tty, truth=truth, minutes=minutes, record=record)
    watch.install_signal_handlers()
    return watch.run()
