"""What ``python -m edge_agent events`` prints: stored events as a table or JSON lines.

Reads the rows :meth:`edge_agent.deliver.outbox.Outbox.recent` returns from the outbox's
history table; nothing here touches the database or the network. The table is for a person
at a terminal on the gateway (one line per event); JSON lines are for scripts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

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
    payload: bytes  # the JSON that was (or will be) published


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
        parsed: dict[str, Any] = json.loads(self.payload)
        return parsed


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
    data = r.data()
    when = data.get("end") if r.state == "close" else data.get("start")
    return str(when or iso(r.created) or "")


def format_events(rows: Sequence[StoredEvent], *, as_json: bool) -> str:
    """``rows`` as an aligned table (newest first, as given) or as one JSON object a line."""
    if as_json:
        lines = [
            json.dumps({**r.data(), "delivery": r.delivery}, separators=(",", ":"))
            for r in rows
        ]
        return "\n".join(lines)
    if not rows:
        return "no events stored"
    header = ("SAMPLE TIME (UTC)", "KIND", "STATE", "EPISODE", "DETAIL", "DELIVERY")
    table = [header] + [
        (
            _when(r),
            r.kind,
            r.state,
            r.episode[:EPISODE_SHORT_CHARS],
            _detail(r.data()),
            r.delivery,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        COLUMN_GAP.join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    )
