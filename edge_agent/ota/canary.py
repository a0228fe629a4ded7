"""The canary: a candidate model scores the machine's recent live rows before it is trusted.

Runs in the updater's thread (never the main loop), after verification and before the
switch. The candidate must load, allocate and run; then it scores the last ``[ota]
canary_s`` of clean rows the agent saw, row by row as the daemon would, next to a second
instance of the running model loaded in this same thread (the running model's interpreter
belongs to the main loop and is not thread-safe). It passes when its p99 CPU time per window
fits the budget (this thread's CPU time, not wall time: a gateway whose cores are briefly busy
with other work, or twenty agents canarying at once on two cores, must not reject a model for
the machine's load; what is judged is the model's own cost) and its share of alerting
windows is at most ``max(canary_alert_floor, canary_max_alert_ratio x the running model's
share)`` on the same rows. Every figure goes
into the report, pass or fail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.bundle.manifest import Manifest
from edge_agent.detect.cascade import STAGE_AUTOENCODER, STAGE_SCREEN, Cascade
from edge_agent.ota.config import OtaConfig
from edge_agent.pipeline import StreamingPipeline

F64 = npt.NDArray[np.float64]
MS_PER_S = 1000.0
LATENCY_PERCENTILE = 99.0
FIGURE_DIGITS = 4

Figures = dict[str, float | int | str | bool | None]


@dataclass(frozen=True)
class History:
    """Clean rows the agent scored, oldest first, with their column names."""

    ts: F64
    rows: F64
    channels: list[str]

    def columns(self, channels: list[str]) -> F64 | None:
        """The rows in ``channels`` order, or None if one of them is not held."""
        if any(c not in self.channels for c in channels):
            return None
        return self.rows[:, [self.channels.index(c) for c in channels]]


class Model(Protocol):
    """What the canary needs of a model: its manifest and cascade (a ``ModelSlot`` has both)."""

    manifest: Manifest
    cascade: Cascade


@dataclass(frozen=True)
class Scored:
    """One model's run over the canary rows."""

    windows: int  # windows scored (screened or stage 2)
    alerts: int  # of which in the alert state
    p99_ms: float  # p99 of the CPU time (this thread) of a push that completed a window

    @property
    def share(self) -> float:
        return self.alerts / self.windows if self.windows else 0.0


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str | None
    figures: Figures


def score(model: Model, ts: F64, rows: F64) -> Scored:
    """Push the rows one at a time through a fresh pipeline of ``model``, timing each push in
    this thread's CPU time."""
    pipe = StreamingPipeline(model.manifest, model.cascade)
    times: list[float] = []
    windows = alerts = 0
    for i in range(ts.shape[0]):
        t0 = time.thread_time()
        batch = pipe.push(ts[i : i + 1], rows[i : i + 1])
        took = time.thread_time() - t0
        if batch.size:
            times.append(took)
            scored = (batch.stage == STAGE_SCREEN) | (batch.stage == STAGE_AUTOENCODER)
            windows += int(np.count_nonzero(scored))
            alerts += int(np.count_nonzero(batch.alert & scored))
    p99 = float(np.percentile(times, LATENCY_PERCENTILE)) * MS_PER_S if times else 0.0
    return Scored(windows, alerts, p99)


def judge(candidate: Model, active: Model | None, history: History | None,
          cfg: OtaConfig) -> Verdict:
    """Score ``candidate`` (already loaded and run once) against ``active`` on ``history``.

    Without a running model, history or ``canary_s``, loading and running was the check."""
    figures: Figures = {
        "canary_s": cfg.canary_s, "latency_budget_ms": cfg.canary_latency_ms,
    }
    if active is None or history is None or cfg.canary_s == 0:
        why = "no running model" if active is None else "canary_s = 0" if cfg.canary_s == 0 \
            else "no live rows yet"
        figures.update(mode="load_only", note=why)
        return Verdict(True, None, figures)
    cand_rows = history.columns(candidate.manifest.channel_names)
    act_rows = history.columns(active.manifest.channel_names)
    if cand_rows is None or act_rows is None:
        figures.update(mode="load_only", note="the recent rows lack channels the model uses")
        return Verdict(True, None, figures)
    cand = score(candidate, history.ts, cand_rows)
    act = score(active, history.ts, act_rows)
    bound = max(cfg.canary_alert_floor, cfg.canary_max_alert_ratio * act.share)
    figures.update(
        mode="scored", rows=int(history.ts.shape[0]), windows=cand.windows,
        alert_share=round(cand.share, FIGURE_DIGITS),
        active_alert_share=round(act.share, FIGURE_DIGITS),
        alert_share_bound=round(bound, FIGURE_DIGITS),
        p99_ms=round(cand.p99_ms, FIGURE_DIGITS), active_p99_ms=round(act.p99_ms, FIGURE_DIGITS),
    )
    if cand.windows == 0:
        figures.update(mode="load_only", note="too few rows for a window")
        return Verdict(True, None, figures)
    if cand.p99_ms > cfg.canary_latency_ms:
        return Verdict(False, (
            f"canary: p99 CPU time per window {cand.p99_ms:.1f} ms is over the "
            f"{cfg.canary_latency_ms:g} ms budget ([ota] canary_latency_ms)"
        ), figures)
    if cand.share > bound:
        return Verdict(False, (
            f"canary: alerts on {cand.share:.1%} of {cand.windows} windows of the last "
            f"{history.ts.shape[0]} rows, over the bound {bound:.1%} (the running model "
            f"alerts on {act.share:.1%})"
        ), figures)
    return Verdict(True, None, figures)
