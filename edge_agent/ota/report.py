"""Telling the world where an update stands: the retained report, an event, metrics, the log.

Used by the updater (``edge_agent.ota.updater``) after every step. The same
:class:`~edge_agent.ota.protocol.Report` goes four ways, none of them able to stop the agent:

- retained on ``<prefix>/<machine>/model`` through the outbox (committed before it is
  published, delivered in order), which ``export fleet`` and staged rollouts read;
- as a ``model_update`` event through the outbox, so the history of transitions is kept
  (progress reports while downloading are retained only, not events);
- as metrics: a state gauge and counters of activations, rejections and rollbacks;
- as a log line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from edge_agent import __version__
from edge_agent.events import (
    SEVERITY_CRITICAL,
    SEVERITY_INFO,
    SEVERITY_WARNING,
    CanaryFigures,
    Event,
    ModelUpdate,
    UpdateState,
    iso,
    new_id,
)
from edge_agent.ota.protocol import REPORT_SUFFIX, Progress, Report

log = logging.getLogger("edge_agent.ota")

REPORT_KIND = "model_report"  # the outbox's kind for the retained report messages
STATES: tuple[UpdateState, ...] = (
    "waiting", "downloading", "verifying", "canary", "probation", "active", "rejected",
    "rolled_back",
)
SEVERITY: dict[UpdateState, int] = {
    "rejected": SEVERITY_WARNING,
    "rolled_back": SEVERITY_CRITICAL,  # a model was taken off the machine
}


class MessageSink(Protocol):
    """What the report needs of the outbox."""

    def add(self, event: Event) -> None: ...

    def add_message(
        self, topic: str, payload: bytes, *, retain: bool = ..., kind: str = ...
    ) -> None: ...


class OtaMetrics:
    """The update's metrics, on the agent's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = Gauge(
            "edge_agent_model_update_state", "1 for the update step this gateway is in",
            ["state"], registry=registry,
        )
        self.activated = Counter(
            "edge_agent_model_updates_activated", "Models switched in over the air",
            registry=registry,
        )
        self.rejected = Counter(
            "edge_agent_model_updates_rejected", "Deployments refused (signature, target, "
            "version, size, disk, verification or canary)", registry=registry,
        )
        self.rolled_back = Counter(
            "edge_agent_model_rollbacks", "Models rolled back in probation or after boots",
            registry=registry,
        )

    def show(self, state: UpdateState) -> None:
        for s in STATES:
            self.state.labels(s).set(1.0 if s == state else 0.0)


class Reporter:
    """Publishes the update state; thread-safe (the updater and the main loop both report)."""

    def __init__(
        self, machine_id: str, groups: Sequence[str], sink: MessageSink,
        wake: Callable[[], None], metrics: OtaMetrics | None = None,
    ) -> None:
        self.machine_id = machine_id
        self.groups = list(groups)
        self._sink = sink
        self._wake = wake
        self._metrics = metrics
        self._lock = threading.Lock()
        self.last: Report | None = None

    def publish(
        self, state: UpdateState, *, active: str | None, previous: str | None = None,
        reason: str | None = None, deployment_id: str | None = None,
        candidate: str | None = None, progress: Progress | None = None,
        canary: CanaryFigures | None = None, event: bool = True,
    ) -> Report:
        """Report ``state``; ``event=False`` for progress only (retained report, no event)."""
        now = time.time()
        report = Report(
            machine_id=self.machine_id, groups=self.groups, active=active, previous=previous,
            state=state, reason=reason, deployment_id=deployment_id, candidate=candidate,
            progress=progress, canary=canary, updated_at=iso(now) or "",
            agent_version=__version__,
        )
        with self._lock:
            self.last = report
            self._sink.add_message(REPORT_SUFFIX, report.to_json(), retain=True, kind=REPORT_KIND)
            if event:
                self._sink.add(_event(report, now))
        if self._metrics is not None:
            self._metrics.show(state)
            if event and state == "rejected":
                self._metrics.rejected.inc()
            elif event and state == "rolled_back":
                self._metrics.rolled_back.inc()
            elif event and state == "probation":
                self._metrics.activated.inc()
        if event:
            level = logging.WARNING if state in SEVERITY else logging.INFO
            log.log(level, "model update: %s", describe(report))
        self._wake()
        return report


def describe(r: Report) -> str:
    """One line for people."""
    parts: list[str] = [r.state]
    if r.candidate:
        parts.append(f"candidate {r.candidate}")
    if r.deployment_id:
        parts.append(f"deployment {r.deployment_id}")
    parts.append(f"running {r.active or 'no model'}")
    text = ", ".join(parts)
    if r.reason:
        text += f": {r.reason}"
    if r.canary and r.canary.get("mode") == "scored":
        c = r.canary
        text += (
            f" (canary: alert share {c.get('alert_share')} vs running "
            f"{c.get('active_alert_share')}, bound {c.get('alert_share_bound')}; p99 "
            f"{c.get('p99_ms')} ms of {c.get('latency_budget_ms')})"
        )
    return text


def _event(r: Report, now: float) -> Event:
    return Event(
        kind="model_update", state=r.state, machine_id=r.machine_id,
        episode=r.deployment_id or new_id(), start=now, end=None,
        severity=SEVERITY.get(r.state, SEVERITY_INFO), model_version=r.active,
        reason=r.reason, detail=describe(r),
        update=ModelUpdate(
            previous=r.previous, candidate=r.candidate, deployment_id=r.deployment_id,
            canary=r.canary,
        ),
        created=now,
    )
