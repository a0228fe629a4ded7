"""What ``python -m edge_agent events`` prints: stored events as a table or JSON lines.

Reads the rows :meth:`edge_agent.deliver.outbox.Outbox.recent` returns from the outbox's
history table; nothing here touches the database or the network. The table is for a person
at a terminal on the gateway (one line per event); JSON lines are for scripts. Besides
events, the history holds the other messages the outbox carried (update reports on
``model``...): the table shows their kind, the ``state`` field of a JSON body, and their
topic; a JSON line wraps their body (or its size, if it is not JSON) with topic and kind.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from edge_agent.deliver.topics import EVENTS
from edge_agent.events import iso

# pending: waiting for a PUBACK; delivered: acknowledged by the broker; dropped: removed by
# the size cap before delivery; local: stored while no broker was configured.
DeliveryState = Literal["pending", "delivered", "dropped", "local"]

EPISODE_SHORT_CHARS = 8  # enough to tell episodes apart on one screen
TOP_CHANNELS_SHOWN = 3
COLUMN_GAP = "  "


@dataclass(frozen=True)
class EventRecord:
    """What the outbox keeps of one event, on disk or in memory."""

    event_id: str
    kind: str
    state: str
    episode: str
    severity: int
    created: float  # epoch s
    payload: bytes  # the exact bytes that were (or will be) published: JSON for events
    topic: str = field(default=EVENTS, kw_only=True)  # relative to <prefix>/<machine>/
    retain: bool = field(default=False, kw_only=True)

    @property
    def is_event(self) -> bool:
        """An anomaly or sensor-fault event (``Outbox.add``), not another message."""
        return self.topic == EVENTS and self.state != ""


@dataclass(frozen=True)
class StoredEvent(EventRecord):
    """One event from the history, with what became of its delivery."""

    delivery: DeliveryState

    @classmethod
    def of(cls, record: EventRecord, delivery: DeliveryState) -> StoredEvent:
        """``record`` with its ``delivery`` state."""
        common = {f.name: getattr(record, f.name) for f in fields(EventRecord)}
        return cls(**common, delivery=delivery)

    @property
    def pending(self) -> bool:
        return self.delivery == "pending"

    def data(self) -> dict[str, Any]:
        """The JSON body (events always have one); ValueError if there is none."""
        parsed: dict[str, Any] = json.loads(self.payload)
        return parsed

    def body(self) -> dict[str, Any] | None:
        """The JSON object in the payload, or None (a message may be binary)."""
        try:
            parsed = json.loads(self.payload)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
            return None
        return parsed if isinstance(parsed, dict) else None

    def line(self) -> dict[str, Any]:
        """One JSON line: what went to the events topic as it went (plus ``delivery``), any
        other message wrapped with its topic and kind."""
        body = self.body()
        if self.topic == EVENTS and body is not None:
            return {**body, "delivery": self.delivery}
        try:
            content: Any = json.loads(self.payload)
        except ValueError:
            content = None
        return {
            "id": self.event_id, "kind": self.kind, "topic": self.topic, "retain": self.retain,
            "created": iso(self.created), "payload": content,
            "payload_bytes": len(self.payload), "delivery": self.delivery,
        }


def delivery_state(*, queued: bool, dropped: bool, waiting: bool) -> DeliveryState:
    if not queued:
        return "local"
    if dropped:
        return "dropped"
    return "pending" if waiting else "delivered"


def _detail(data: dict[str, Any]) -> str:
    if data.get("kind") == "sensor_fault":
        return " ".join(str(data[k]) for k in ("channel", "reason") if k in data)
    parts = [
        f"{c['channel']} {c['share']:.0%}"
        for c in data.get("top_channels", [])[:TOP_CHANNELS_SHOWN]
    ]
    text = ", ".join(parts)
    if "peak_score" in data:
        text += f" score={data['peak_score']:.3g}"
    if "p_anomaly" in data:
        text += f" p={data['p_anomaly']:.2f}"
    return text.strip()


def _when(r: StoredEvent) -> str:
    """The sample time the message is about: the end for a close, else the start."""
    data = r.body() or {}
    when = data.get("end") if r.state == "close" else data.get("start")
    return str(when or iso(r.created) or "")


def _message_detail(r: StoredEvent) -> str:
    body = r.body()
    what = f"{len(r.payload)} bytes" if body is None else str(body.get("reason") or "")
    where = f"-> {r.topic}{' (retained)' if r.retain else ''}"
    return f"{where} {what}".strip()


def _row(r: StoredEvent) -> tuple[str, str, str, str, str, str]:
    if r.is_event:
        detail = _detail(r.body() or {})
        state = r.state
    else:
        detail = _message_detail(r)
        state = str((r.body() or {}).get("state", ""))
    return (_when(r), r.kind, state, r.episode[:EPISODE_SHORT_CHARS], detail, r.delivery)


def format_events(rows: Sequence[StoredEvent], *, as_json: bool) -> str:
    """``rows`` as an aligned table (newest first, as given) or as one JSON object a line."""
    if as_json:
        return "\n".join(json.dumps(r.line(), separators=(",", ":")) for r in rows)
    if not rows:
        return "no events stored"
    header = ("SAMPLE TIME (UTC)", "KIND", "STATE", "EPISODE", "DETAIL", "DELIVERY")
    table = [header] + [_row(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        COLUMN_GAP.join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    )
