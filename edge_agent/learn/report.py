"""What the learner tells the world: a retained report per round, metrics, the log.

Pipeline position: fleet learning, beside the learner (``edge_agent.learn.learner``). Each
round outcome (a delta sent, a round refused and why, a round that failed) becomes a
:class:`LearnReport`, retained on ``<prefix>/<machine>/learn`` through the outbox (kind
``model_delta`` in the history, so ``edge_agent events`` lists it), and updates the metrics on
the agent's registry: rounds by outcome, the last round's CPU seconds and time, the buffer's
size, and the alert-threshold scale personalisation applied.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import Field

from edge_agent.config.strict import StrictModel
from edge_agent.events import iso

log = logging.getLogger("edge_agent.learn")

REPORT_TOPIC = "learn"  # <prefix>/<machine>/learn, retained
REPORT_KIND = "model_delta"  # the outbox history's kind of these reports
DELTA_TOPIC = "delta"  # <prefix>/<machine>/delta: the signed deltas themselves
DELTA_KIND = "model_delta_payload"
Outcome = Literal["sent", "refused", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("sent", "refused", "failed")


class LearnReport(StrictModel):
    """The outcome of one round on this gateway."""

    machine_id: str = Field(description="This gateway")
    outcome: Outcome = Field(description="sent: a delta is in the outbox; refused; failed")
    round_id: str | None = Field(description="The round (None: an announcement not opened)")
    model_version: str | None = Field(description="The model this gateway runs")
    reason: str | None = Field(default=None, description="Why refused or failed")
    samples: int | None = Field(default=None, description="Windows trained on")
    epochs: int | None = Field(default=None, description="Local epochs run")
    loss_first: float | None = Field(default=None, description="Mean batch MSE, first epoch")
    loss_last: float | None = Field(default=None, description="Mean batch MSE, last epoch")
    cpu_s: float | None = Field(default=None, description="CPU seconds of the training thread")
    stopped_by_budget: bool | None = Field(default=None, description="CPU budget ended it")
    train_rss_mib: float | None = Field(
        default=None, description="Peak resident memory (MiB) of the process that trained"
    )
    delta_bytes: int | None = Field(default=None, description="Size of the signed delta")
    k: int | None = Field(default=None, description="Entries sent")
    updated_at: str = Field(description="When (ISO 8601 UTC)")

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":")).encode()

    def summary(self) -> str:
        what = f"round {self.round_id or '?'} {self.outcome}"
        if self.outcome == "sent":
            return (f"{what}: {self.samples} windows, {self.epochs} epoch(s), loss "
                    f"{self.loss_first:.4g} -> {self.loss_last:.4g}, {self.cpu_s:.1f} CPU s, "
                    f"{self.delta_bytes} bytes")
        return f"{what}: {self.reason}"


def now_iso() -> str:
    return iso(time.time()) or ""


class MessageSink(Protocol):
    """What the learner needs of the outbox."""

    def add_message(
        self, topic: str, payload: bytes, *, retain: bool = ..., kind: str = ...
    ) -> None: ...


class LearnMetrics:
    """Fleet learning's metrics, on the agent's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rounds = Counter(
            "edge_agent_learn_rounds", "Local training rounds by outcome (sent, refused, "
            "failed)", ["outcome"], registry=registry,
        )
        for outcome in OUTCOMES:
            self.rounds.labels(outcome)
        self.cpu_s = Gauge(
            "edge_agent_learn_last_round_cpu_seconds", "CPU seconds of the last local round",
            registry=registry,
        )
        self.last_round = Gauge(
            "edge_agent_learn_last_round_timestamp_seconds", "When the last local round ended "
            "(epoch s)", registry=registry,
        )
        self.buffer_bytes = Gauge(
            "edge_agent_learn_buffer_bytes", "Size of the buffer of normal rows on disk",
            registry=registry,
        )
        self.buffer_rows = Gauge(
            "edge_agent_learn_buffer_rows", "Normal rows in the buffer", registry=registry,
        )
        self.threshold_scale = Gauge(
            "edge_agent_alert_threshold_scale", "Factor applied to the model's alert "
            "threshold by local calibration (1: the manifest's)", registry=registry,
        )
        self.threshold_scale.set(1.0)

    def watch_buffer(self, rows: Callable[[], float], size: Callable[[], float]) -> None:
        """Read the buffer's size at scrape time."""
        self.buffer_rows.set_function(rows)
        self.buffer_bytes.set_function(size)


class Reporter:
    """Turns round outcomes into the retained report, the metrics and a log line."""

    def __init__(self, machine_id: str, sink: MessageSink, wake: Callable[[], None],
                 metrics: LearnMetrics, wall: Callable[[], float],
                 version: Callable[[], str | None]) -> None:
        self.machine_id = machine_id
        self._sink, self._wake, self.metrics = sink, wake, metrics
        self._wall, self._version = wall, version
        self._refused: set[tuple[str, str]] = set()  # (round, cause) reported in this run
        self.last: LearnReport | None = None

    def refuse(self, round_id: str | None, reason: str, *, key: str = "",
               outcome: Outcome = "refused") -> None:
        """Report a refusal (or a fault) once per round and cause in this run: a retained
        round comes back at every reconnect, and a waiting one is looked at every second."""
        mark = (round_id or "", key or reason)
        if mark not in self._refused:
            self._refused.add(mark)
            self.report(outcome, round_id, reason)

    def report(self, outcome: Outcome, round_id: str | None, reason: str | None,
               **figures: float | int | bool | None) -> None:
        r = LearnReport.model_validate({
            "machine_id": self.machine_id, "outcome": outcome, "round_id": round_id,
            "model_version": self._version(), "reason": reason, "updated_at": now_iso(),
            **figures,
        })
        self.last = r
        self.metrics.rounds.labels(outcome).inc()
        self.metrics.last_round.set(self._wall())
        log.log(logging.INFO if outcome == "sent" else logging.WARNING, "fleet learning: %s",
                r.summary())
        try:
            self._sink.add_message(REPORT_TOPIC, r.to_json(), retain=True, kind=REPORT_KIND)
        except Exception:  # a report must never stop the learner
            log.exception("could not queue the fleet-learning report")
        self._wake()
