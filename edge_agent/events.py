"""Events: what leaves the gateway. One per anomalous episode or sensor fault, not per window.

Produced at the end of the pipeline (``edge_agent.detect.episodes`` for process anomalies,
``edge_agent.data.quality`` for sensor faults; ``edge_agent.ota`` adds one ``model_update``
per step of an over-the-air update, its ``episode`` the deployment), committed to the outbox
(``edge_agent.deliver.outbox``) and published over MQTT. The payload is plain JSON so that any
upstream system can read it; ``id`` is unique per message, so a consumer that sees the same id
twice (a re-send after a lost PUBACK or an agent restart) can drop the copy.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Literal

EventKind = Literal["anomaly", "sensor_fault", "model_update"]
# The steps of an over-the-air update (``edge_agent.ota.protocol`` reports the same).
UpdateState = Literal[
    "waiting",  # no model yet (first boot): polling, reporting faults, waiting for a deployment
    "downloading",
    "verifying",
    "canary",
    "probation",
    "active",
    "rejected",
    "rolled_back",
]
# anomaly and sensor_fault episodes open, update and close; a model_update is in a step.
EventState = Literal["open", "update", "close"] | UpdateState

# Severity orders what the outbox drops first when its size cap is reached (lowest first).
SEVERITY_INFO = 0  # updates of an open episode
SEVERITY_WARNING = 1  # sensor faults
SEVERITY_CRITICAL = 2  # anomaly episodes opening and closing

EVENT_SCHEMA_VERSION = 1


def iso(t: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds, or None."""
    if t is None:
        return None
    stamp = dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class ChannelShare:
    channel: str
    share: float  # fraction of the reconstruction error from this channel


CanaryFigures = dict[str, float | int | str | bool | None]


@dataclass(frozen=True)
class ModelUpdate:
    """What a ``model_update`` event tells beyond the common fields (``model_version`` is the
    model scoring now, ``reason`` why an update was rejected or rolled back)."""

    previous: str | None = None  # version a rollback would go back to
    candidate: str | None = None  # version being installed
    deployment_id: str | None = None
    canary: CanaryFigures | None = None  # the canary's figures, once it ran


@dataclass(frozen=True)
class Event:
    """One message about one episode. ``episode`` is shared by the open/update/close messages of
    the same episode; ``id`` is unique to this message."""

    kind: EventKind
    state: EventState
    machine_id: str
    episode: str
    start: float  # epoch s of the first sample of the episode
    end: float | None  # epoch s of the closing sample; None while open
    severity: int
    model_version: str | None = None
    stage: int | None = None  # 2 when the autoencoder scored the episode's windows
    peak_score: float | None = None
    p_anomaly: float | None = None  # peak probability over the episode so far
    top_channels: tuple[ChannelShare, ...] = ()
    channel: str | None = None  # sensor_fault: the channel concerned
    reason: str | None = None  # sensor_fault: nan | range | stuck | stale; model_update: why
    detail: str | None = None  # human-readable one-liner
    update: ModelUpdate | None = None  # model_update only
    id: str = field(default_factory=new_id)
    created: float = 0.0  # epoch s when the message was made

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["schema"] = EVENT_SCHEMA_VERSION
        d["start"] = iso(self.start)
        d["end"] = iso(self.end)
        d["created"] = iso(self.created)
        d["top_channels"] = [
            {"channel": c.channel, "share": round(c.share, 4)} for c in self.top_channels
        ]
        if self.update is not None:
            d["update"] = {k: v for k, v in d["update"].items() if v is not None}
        return {k: v for k, v in d.items() if v is not None}

    def summary(self) -> str:
        """One log line for people: what, which episode, when, and why."""
        when = iso(self.end if self.state == "close" else self.start)
        what = f"{self.kind} {self.state} {self.episode[:8]} at {when}"
        if self.kind == "model_update":
            return f"model_update {self.state}: {self.detail or self.reason or ''}".rstrip(": ")
        if self.kind == "sensor_fault":
            return f"{what}: {self.channel} {self.reason}" + (
                f" ({self.detail})" if self.detail else ""
            )
        tops = ", ".join(f"{c.channel} {c.share:.0%}" for c in self.top_channels)
        score = "" if self.peak_score is None else f" peak error {self.peak_score:.3g}"
        p = "" if self.p_anomaly is None else f" p_anomaly {self.p_anomaly:.3f}"
        return f"{what}:{score}{p}" + (f"; top channels {tops}" if tops else "")

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()
