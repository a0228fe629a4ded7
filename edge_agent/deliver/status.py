"""Topics and the retained status messages of the MQTT uplink: birth, last will, heartbeat.

Used by ``edge_agent.deliver.mqtt``. A dashboard subscribes to ``<prefix>/<machine>/status``
and, because every message there is retained, sees the gateway's latest state at once:
``online`` on every connect (birth), ``online`` again with health counters every heartbeat,
``offline`` on a clean shutdown, and ``offline`` from the broker itself (the last will) when
the gateway vanishes without saying goodbye (power cut, crash, network loss).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Literal, TypedDict

from edge_agent import __version__
from edge_agent.deliver.config import MqttConfig
from edge_agent.deliver.topics import EVENTS, STATUS, machine_topic
from edge_agent.events import iso

StatusState = Literal["online", "offline"]
UPTIME_DECIMALS = 1

WILL_REASON = "connection lost"  # the broker publishes it: we cannot know the real cause
SHUTDOWN_REASON = "shutdown"


class Refusal(TypedDict):
    """The latest publish the broker refused (a PUBACK reason code from 0x80)."""

    topic: str
    reason_code: int  # e.g. 135 (0x87, Not authorized: the broker's ACL denies the topic)
    reason: str  # the code's name
    time: str | None  # ISO 8601 UTC


class InboundStats(TypedDict):
    """Counters of the downlink (``edge_agent.deliver.downlink``) since start."""

    inbound_received: int  # messages handed to the handlers of their filters
    inbound_dropped: int  # over the inbound size limit, or a topic that is not UTF-8
    inbound_handler_errors: int  # exceptions raised by handlers
    subscribe_refused: int  # SUBACK failure codes (the broker's ACL denies the filter)
    last_subscribe_refusal: Refusal | None  # ``topic`` is the refused filter


class UplinkStats(InboundStats):
    """Counters since start (for the heartbeat and metrics)."""

    connected: bool
    published: int  # outbox rows (events and messages) sent, re-sends included
    acked: int  # outbox rows the broker accepted (and the outbox deleted)
    publish_refused: int  # PUBACKs with a failure reason code; refused rows stay queued
    last_refusal: Refusal | None
    ack_timeouts: int  # connections dropped because a PUBACK did not come in time
    session_takeovers: int  # the broker said another client took our client id over
    connects: int
    reconnects: int  # connects after the first
    connect_failures: int
    connection_losses: int
    heartbeats: int
    inflight: int
    last_ack_latency_s: float | None  # PUBLISH to PUBACK of the latest acknowledged event
    worker_crashes: int  # unexpected errors that restarted the uplink's thread


def events_topic(cfg: MqttConfig, machine_id: str) -> str:
    return machine_topic(cfg.topic_prefix, machine_id, EVENTS)


def status_topic(cfg: MqttConfig, machine_id: str) -> str:
    return machine_topic(cfg.topic_prefix, machine_id, STATUS)


def status_payload(
    state: StatusState,
    machine_id: str,
    *,
    reason: str | None = None,
    stamped: bool = True,
    extra: Mapping[str, object] | None = None,
) -> bytes:
    """A status message. ``stamped=False`` for the last will: it is registered at connect
    time and published by the broker later, so a time in it would be wrong."""
    body: dict[str, object] = {
        "state": state,
        "machine_id": machine_id,
        "agent_version": __version__,
    }
    if stamped:
        body["time"] = iso(time.time())
    if reason is not None:
        body["reason"] = reason
    if extra:
        # Health counters may not overwrite the fields a dashboard keys on.
        body.update({k: v for k, v in extra.items() if k not in body})
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def will_payload(machine_id: str) -> bytes:
    return status_payload("offline", machine_id, reason=WILL_REASON, stamped=False)


def heartbeat_payload(
    machine_id: str, *, uptime_s: float, outbox_depth: int, outbox_dropped: int,
    stats: UplinkStats, health: Mapping[str, object],
) -> bytes:
    """``online`` with the outbox and uplink counters and the agent's ``health`` merged in."""
    extra: dict[str, object] = {
        "uptime_s": round(uptime_s, UPTIME_DECIMALS),
        "outbox_depth": outbox_depth,
        "outbox_dropped": outbox_dropped,
        "mqtt": dict(stats),
    }
    extra.update(health)
    return status_payload("online", machine_id, extra=extra)
