"""From per-window alert states to episode events: the last step before the outbox.

Sits after :class:`edge_agent.pipeline.StreamingPipeline`. The hysteresis says, per window,
whether the machine is in alert; upstream wants one story per episode, not one line per
window. :class:`EpisodeTracker` turns the state's transitions into :class:`Event` messages
sharing one ``episode`` id:

* ``open`` (critical) when the state turns on. ``start`` is the end time of the first window
  of the raw-alert run that opened it, so the episode starts where the evidence starts.
* ``update`` (info) while open, at most once per ``update_interval_s`` of *sample* time, and
  only when the peak score or ``p_anomaly`` rose since the last message.
* ``close`` (critical) when the state turns off (``end`` = that window's end time), or when a
  new segment begins (a data gap): then ``end`` is the last window end before the gap.

Payload: ``peak_score`` (largest stage-2 reconstruction error; the only score in alert
units), ``p_anomaly`` (peak), ``stage`` (highest seen), ``top_channels`` (largest mean share
of the error over the episode's stage-2 windows). Windows from the start of the opening run
to the close all count. Times are sample times, so replaying the same data gives the same
episodes; ``created`` is the caller's wall clock.

State lives in memory only. When the agent stops or swaps its model it ends an open episode
with :meth:`EpisodeTracker.close_open` (a ``close`` of the model that scored it, saying why);
after a crash or power cut an open episode is lost without a ``close`` (consumers should expire
open episodes they stop hearing about), and a new one opens once the restarted pipeline alerts
again.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_agent.config.model import EventsConfig
from edge_agent.detect.cascade import STAGE_AUTOENCODER
from edge_agent.events import (
    SEVERITY_CRITICAL,
    SEVERITY_INFO,
    ChannelShare,
    Event,
    EventState,
    new_id,
)
from edge_agent.pipeline import WindowBatch

NO_SEGMENT = -1


class _Episode:
    """Running summary of the windows of one alert run or episode."""

    def __init__(self, start: float, channels: int) -> None:
        self.id = new_id()
        self.start = start
        self.peak_score = -np.inf  # over stage-2 windows only
        self.peak_p = 0.0
        self.stage = 0
        self.share_sum = np.zeros(channels, np.float64)
        self.stage2 = 0
        self.sent_time = start
        self.sent_score = -np.inf
        self.sent_p = -np.inf

    def add(self, b: WindowBatch, i: int) -> None:
        self.stage = max(self.stage, int(b.stage[i]))
        self.peak_p = max(self.peak_p, float(b.p_anomaly[i]))
        if b.stage[i] == STAGE_AUTOENCODER:
            self.peak_score = max(self.peak_score, float(b.score[i]))
            self.share_sum += b.contributions[i]
            self.stage2 += 1

    def rose(self) -> bool:
        return self.peak_score > self.sent_score or self.peak_p > self.sent_p


class EpisodeTracker:
    """Alert episodes of one machine; feed it every :class:`WindowBatch` in order."""

    def __init__(
        self, machine_id: str, model_version: str, channels: list[str], cfg: EventsConfig
    ) -> None:
        self.machine_id = machine_id
        self.model_version = model_version
        self.channels = list(channels)
        self.cfg = cfg
        self._segment = NO_SEGMENT
        self._run: _Episode | None = None  # raw-alert run not (yet) an episode
        self._open: _Episode | None = None
        self._last_end = 0.0

    @property
    def open_episode(self) -> str | None:
        """Id of the open episode, if any."""
        return None if self._open is None else self._open.id

    def update(self, batch: WindowBatch, now: float) -> list[Event]:
        """Events caused by ``batch``, in time order; ``now`` (epoch s) stamps them."""
        out: list[Event] = []
        n = batch.size
        same_segment = n and batch.segment[-1] == self._segment
        if same_segment and self._open is None and not batch.raw_alert.any():
            self._run = None  # nothing can open here: skip the per-window walk
            n = 0
        for i in range(n):
            self._window(batch, i, now, out)
        seg = batch.current_segment
        if seg not in (NO_SEGMENT, self._segment):
            # Data came back after a gap but no window is complete yet: close now.
            self._new_segment(seg, now, out)
        return out

    def _window(self, b: WindowBatch, i: int, now: float, out: list[Event]) -> None:
        t = float(b.end_time[i])
        if b.segment[i] != self._segment:
            self._new_segment(int(b.segment[i]), now, out)
        ep = self._open
        if ep is None:
            if b.raw_alert[i] or b.alert[i]:
                self._run = self._run or _Episode(t, len(self.channels))
                self._run.add(b, i)
            else:
                self._run = None
            if b.alert[i] and self._run is not None:
                self._open, self._run = self._run, None
                self._open.sent_time = t
                out.append(self._event(self._open, "open", None, now))
        else:
            ep.add(b, i)
            if not b.alert[i]:
                out.append(self._event(ep, "close", t, now))
                self._open = None
            elif t - ep.sent_time >= self.cfg.update_interval_s and ep.rose():
                ep.sent_time = t
                out.append(self._event(ep, "update", None, now))
        self._last_end = t

    def close_open(self, now: float, reason: str) -> list[Event]:
        """End the open episode, if any, before its windows say so: ``reason`` tells why
        (the model is being replaced, the agent is stopping). Its ``end`` is the last window
        seen. The tracker is left empty, as if it had just started."""
        out: list[Event] = []
        if self._open is not None:
            out.append(self._event(self._open, "close", self._last_end, now, why=reason))
        self._open = None
        self._run = None
        self._segment = NO_SEGMENT
        return out

    def _new_segment(self, seg: int, now: float, out: list[Event]) -> None:
        if self._open is not None:
            out.append(self._event(self._open, "close", self._last_end, now))
            self._open = None
        self._run = None
        self._segment = seg

    def _event(
        self, ep: _Episode, state: EventState, end: float | None, now: float, why: str = ""
    ) -> Event:
        ep.sent_score, ep.sent_p = ep.peak_score, ep.peak_p
        top = self._top_channels(ep.share_sum / max(ep.stage2, 1))
        peak = ep.peak_score if ep.stage2 else None
        names = ", ".join(c.channel for c in top) or "no channel"
        detail = f"anomaly {state}: peak p_anomaly {ep.peak_p:.4f}, mostly {names}"
        return Event(
            kind="anomaly",
            state=state,
            machine_id=self.machine_id,
            episode=ep.id,
            start=ep.start,
            end=end,
            severity=SEVERITY_INFO if state == "update" else SEVERITY_CRITICAL,
            model_version=self.model_version,
            stage=ep.stage,
            peak_score=peak,
            p_anomaly=ep.peak_p,
            top_channels=top,
            detail=f"{detail}; closed early: {why}" if why else detail,
            created=now,
        )

    def _top_channels(self, share: npt.NDArray[np.float64]) -> tuple[ChannelShare, ...]:
        order = np.argsort(-share, kind="stable")[: self.cfg.top_channels]
        return tuple(ChannelShare(self.channels[j], float(share[j])) for j in order if share[j] > 0)
