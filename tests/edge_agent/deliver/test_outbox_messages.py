"""Messages other than events through the outbox: their topics, retain flag and order, on disk,
in memory, over a real Mosquitto; and an outbox file from the previous schema migrated in place.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from broker import Mosquitto, Received, Subscriber
from deliver_support import MACHINE, UplinkFactory, make_event, mqtt_config, wait_until

from edge_agent.deliver import store
from edge_agent.deliver.config import OutboxConfig
from edge_agent.deliver.outbox import Outbox, OutboxError, format_events, read_recent
from edge_agent.deliver.schema import SCHEMA_VERSION
from edge_agent.events import SEVERITY_CRITICAL, SEVERITY_INFO

TREE = f"edge/{MACHINE}/#"
EVENTS = f"edge/{MACHINE}/events"
MODEL = f"edge/{MACHINE}/model"
DELTA = f"edge/{MACHINE}/delta"
WAIT_S = 15.0
RETRY_S = 0.2
BUSY_S = 0.05
NOT_AUTHORIZED = 0x87
BINARY = bytes(range(256))  # not UTF-8: a model delta, say

# The schema this agent's previous release wrote (version 1), kept verbatim to build old files.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    severity INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_drop_order ON outbox (severity, seq);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    episode TEXT NOT NULL,
    severity INTEGER NOT NULL,
    created REAL NOT NULL,
    dropped INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_seq ON history (seq);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', 1);
"""


def report(state: str, n: int = 0) -> bytes:
    return json.dumps({"state": state, "active": f"v{n}", "reason": f"step {n}"}).encode()


def _where(msgs: list[Received]) -> list[tuple[str, str]]:
    """(topic, id or state) of each message, in arrival order."""
    out = []
    for m in msgs:
        body = m.json() if m.payload != BINARY else {"state": "binary"}
        out.append((m.topic, body.get("id") or body["state"]))
    return out


def test_messages_and_events_arrive_in_order_on_their_topics_retained_as_asked(
    mosquitto: Mosquitto, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    e0, e1, e2 = (make_event(n) for n in range(3))
    outbox.add(e0)
    outbox.add_message("model", report("downloading", 1), retain=True, kind="model_update")
    outbox.add(e1)
    outbox.add_message("delta", BINARY, kind="delta")
    outbox.add_message("model", report("active", 2), retain=True, kind="model_update")
    outbox.add(e2)
    expected = [
        (EVENTS, e0.id), (MODEL, "downloading"), (EVENTS, e1.id), (DELTA, "binary"),
        (MODEL, "active"), (EVENTS, e2.id),
    ]
    with Subscriber(mosquitto.port, TREE, v5=True) as live:
        start_uplink(mqtt_config(mosquitto.port, event_expiry_s=3600), outbox)
        got = live.wait_until(lambda m: len([x for x in m if x.topic != f"edge/{MACHINE}/status"])
                              >= len(expected), WAIT_S, "every row")
        wait_until(lambda: outbox.depth() == 0, WAIT_S, "an empty outbox")
    rows = [m for m in got if not m.topic.endswith("/status")]
    assert _where(rows) == expected
    model = next(m for m in rows if m.topic == MODEL)
    assert model.expiry_s is None  # only events expire: a retained report must stay
    assert model.content_type == "application/json"
    assert dict(model.user_properties)["machine_id"] == MACHINE
    delta = next(m for m in rows if m.topic == DELTA)
    assert delta.payload == BINARY
    assert delta.content_type is None  # not JSON, so not labelled JSON
    assert next(m for m in rows if m.topic == EVENTS).expiry_s is not None
    # A subscriber arriving later finds the newest report retained, and no retained event.
    with Subscriber(mosquitto.port, MODEL) as late:
        (kept,) = late.wait_for(1, WAIT_S)
    assert kept.retain is True
    assert kept.json()["state"] == "active"
    with Subscriber(mosquitto.port, EVENTS) as late_events:
        time.sleep(0.3)
        assert late_events.messages == []


def test_messages_are_durable_and_keep_topic_and_retain(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    box = Outbox(path, OutboxConfig(), deliver=True)
    box.add(make_event(1))
    box.add_message("model", report("canary"), retain=True, kind="model_update",
                    message_id="m-1")
    box.add_message("delta", BINARY, kind="delta", severity=SEVERITY_INFO)
    box.close()
    again = Outbox(path, OutboxConfig(), deliver=True)
    try:
        rows = again.pending(10)
        assert [(r.topic, r.retain) for r in rows] == [
            ("events", False), ("model", True), ("delta", False),
        ]
        assert rows[1].event_id == "m-1"
        assert rows[2].payload == BINARY
        assert again.depth() == 3
    finally:
        again.close()


@pytest.mark.parametrize("topic", ["", "/model", "model/", "a//b", "model/#", "+/x", "status"])
def test_a_topic_the_uplink_cannot_publish_is_refused(outbox: Outbox, topic: str) -> None:
    with pytest.raises(ValueError, match="outbox message topic"):
        outbox.add_message(topic, b"{}")
    assert outbox.depth() == 0


@pytest.fixture
def quick_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "BUSY_TIMEOUT_S", BUSY_S)


@pytest.mark.usefixtures("quick_busy")
def test_messages_wait_in_memory_while_the_disk_refuses_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.db"
    box = Outbox(path, OutboxConfig(retry_s=RETRY_S, memory_events=2), deliver=True)
    try:
        with closing(sqlite3.connect(path, isolation_level=None)) as lock:
            lock.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
            box.add_message("model", report("verifying"), retain=True, kind="model_update")
            box.add(make_event(1, severity=SEVERITY_CRITICAL))
            assert box.health()["degraded"] is True
            assert [(r.topic, r.retain) for r in box.pending(10)] == [
                ("model", True), ("events", False),
            ]
            with caplog.at_level(logging.ERROR, "edge_agent.deliver.outbox"):
                box.add_message("delta", BINARY, kind="delta", severity=SEVERITY_INFO)
            # Memory holds two: the delta, lowest severity, is dropped, logged by size.
            assert f"<{len(BINARY)} bytes for topic 'delta'>" in caplog.text
            lock.execute("ROLLBACK")
        time.sleep(RETRY_S * 1.5)
        box.maintain()
        assert box.health()["degraded"] is False
        assert [(r.topic, r.retain) for r in box.pending(10)] == [
            ("model", True), ("events", False),
        ]
    finally:
        box.close()


def test_listing_shows_messages_beside_events(outbox: Outbox) -> None:
    event = make_event(1)
    outbox.add(event)
    outbox.add_message("model", report("probation", 3), retain=True, kind="model_update")
    outbox.add_message("delta", BINARY, kind="delta")
    rows = outbox.recent()
    table = format_events(rows, as_json=False).splitlines()
    assert "delta" in table[1]
    assert f"-> delta {len(BINARY)} bytes" in table[1]
    assert "model_update" in table[2]
    assert "probation" in table[2]
    assert "-> model (retained) step 3" in table[2]
    assert "anomaly" in table[3]
    lines = [json.loads(x) for x in format_events(rows, as_json=True).splitlines()]
    assert lines[0]["topic"] == "delta"
    assert lines[0]["payload"] is None
    assert lines[0]["payload_bytes"] == len(BINARY)
    assert lines[1]["payload"]["state"] == "probation"
    assert lines[1]["retain"] is True
    assert lines[2]["id"] == event.id
    assert lines[2]["delivery"] == "pending"
    assert [r.event_id for r in outbox.recent(topic="events")] == [event.id]
    assert [r.kind for r in outbox.recent(kind="model_update")] == ["model_update"]


# -- an outbox file from the previous release ------------------------------------------------


@pytest.fixture
def old_file(tmp_path: Path) -> tuple[Path, list[str]]:
    """An events.db as version 1 left it: two undelivered events, one delivered."""
    path = tmp_path / "events.db"
    events = [make_event(n) for n in range(3)]
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(SCHEMA_V1)
        for seq, e in enumerate(events, start=1):
            if seq > 1:  # the first was acknowledged and deleted
                conn.execute(
                    "INSERT INTO outbox (seq, event_id, severity, payload) VALUES (?, ?, ?, ?)",
                    (seq, e.id, e.severity, e.to_json()),
                )
            conn.execute(
                "INSERT INTO history (seq, event_id, kind, state, episode, severity, created,"
                " payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, e.id, e.kind, e.state, e.episode, e.severity, e.created, e.to_json()),
            )
    return path, [e.id for e in events]


def _version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])


def test_the_previous_schema_is_read_as_it_is_by_the_events_command(
    old_file: tuple[Path, list[str]],
) -> None:
    path, ids = old_file
    rows = read_recent(path)
    assert [r.event_id for r in reversed(rows)] == ids
    assert [r.delivery for r in reversed(rows)] == ["delivered", "pending", "pending"]
    assert {(r.topic, r.retain) for r in rows} == {("events", False)}
    assert [r.event_id for r in read_recent(path, topic="model")] == []
    assert _version(path) == 1  # read-only: never migrated behind the daemon's back


def test_the_previous_schema_is_migrated_in_place_and_keeps_its_events(
    old_file: tuple[Path, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    path, ids = old_file
    with caplog.at_level(logging.INFO, "edge_agent.deliver.outbox"):
        box = Outbox(path, OutboxConfig(), deliver=True)
    try:
        assert _version(path) == SCHEMA_VERSION
        assert "migrated from schema version 1" in caplog.text
        box.add_message("model", report("active"), retain=True, kind="model_update")
        rows = box.pending(10)
        assert [r.event_id for r in rows[:2]] == ids[1:]  # the old ones first, in order
        assert [(r.topic, r.retain) for r in rows] == [
            ("events", False), ("events", False), ("model", True),
        ]
        assert rows[2].seq > rows[1].seq
        assert [r.delivery for r in box.recent()][-1] == "delivered"
    finally:
        box.close()
    again = Outbox(path, OutboxConfig(), deliver=True)  # opening a migrated file again
    assert again.depth() == 3
    again.close()


def test_a_newer_schema_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    Outbox(path, OutboxConfig(), deliver=True).close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                     (SCHEMA_VERSION + 1,))
    with pytest.raises(OutboxError, match="written by a newer agent"):
        Outbox(path, OutboxConfig(), deliver=True)


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, Path]]:
    """A broker whose ACL lets the gateway publish events and status but not ``model``."""
    acl = tmp_path / "acl"
    acl.write_text("topic read edge/#\ntopic write edge/+/status\ntopic write edge/+/events\n")
    broker = Mosquitto(tmp_path / "broker", acl_file=acl, extra=["max_queued_messages 1000"])
    broker.start()
    yield broker, acl
    broker.stop()


def test_a_refused_message_keeps_its_place_until_the_acl_allows_it(
    acl_broker: tuple[Mosquitto, Path], outbox: Outbox, start_uplink: UplinkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker, acl = acl_broker
    before, after = make_event(1), make_event(2)
    outbox.add(before)
    outbox.add_message("model", report("rejected"), retain=True, kind="model_update")
    outbox.add(after)
    with (Subscriber(broker.port, TREE) as sub,
          caplog.at_level(logging.ERROR, "edge_agent.deliver.mqtt")):
        uplink = start_uplink(mqtt_config(broker.port), outbox)
        wait_until(lambda: uplink.stats()["publish_refused"] >= 1, WAIT_S, "a refusal")
        refusal = uplink.stats()["last_refusal"]
        assert refusal is not None
        assert (refusal["topic"], refusal["reason_code"]) == (MODEL, NOT_AUTHORIZED)
        assert f"'{MODEL}'" in caplog.text
        assert outbox.depth() == 2  # the message, and the event behind it
        acl.write_text(acl.read_text() + "topic write edge/+/model\n")
        broker.reload()
        wait_until(lambda: outbox.depth() == 0, WAIT_S, "an empty outbox")
        got = sub.wait_until(lambda m: len([x for x in m if "status" not in x.topic]) >= 3,
                             WAIT_S, "all three")
    assert _where([m for m in got if "status" not in m.topic]) == [
        (EVENTS, before.id), (MODEL, "rejected"), (EVENTS, after.id),
    ]
