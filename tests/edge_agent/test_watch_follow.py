"""How the live view follows events (``edge_agent.watch.follow``): as an MQTT consumer on a
real Mosquitto (retained status, events, a payload that is not JSON, a broker that is not
there), and from the agent's real SQLite outbox when there is no broker."""

from __future__ import annotations

import time
from pathlib import Path

from broker import LOCALHOST, Mosquitto, free_port
from paho.mqtt import publish
from waiting import wait_for

from edge_agent.deliver.config import MqttConfig, OutboxConfig
from edge_agent.deliver.outbox import Outbox
from edge_agent.deliver.status import status_payload
from edge_agent.events import SEVERITY_CRITICAL, Event
from edge_agent.watch.follow import LocalFeed, MqttFeed

MACHINE = "press-4"
WAIT_S = 5.0
STOP_S = 2.0  # paho's reconnect wait sleeps in steps of at most 1 s


def _event(n: int, created: float) -> Event:
    return Event(kind="anomaly", state="open", machine_id=MACHINE, episode=f"ep{n}",
                 start=created, end=None, severity=SEVERITY_CRITICAL, created=created)


def test_mqtt_feed_sees_what_an_upstream_consumer_sees(mosquitto: Mosquitto) -> None:
    cfg = MqttConfig(host=LOCALHOST, port=mosquitto.port, topic_prefix="plant")
    # Retained before the view subscribes, as the agent's birth would be.
    publish.single(f"plant/{MACHINE}/status", status_payload("online", MACHINE), qos=1,
                   retain=True, hostname=LOCALHOST, port=mosquitto.port)
    feed = MqttFeed(cfg, MACHINE)
    feed.start()
    try:
        assert wait_for(lambda: feed.status is not None, WAIT_S), feed.problem
        assert feed.connected is True
        assert feed.problem is None
        for payload in (_event(1, time.time()).to_json(), b"\x00 not json"):
            publish.single(f"plant/{MACHINE}/events", payload, qos=1,
                           hostname=LOCALHOST, port=mosquitto.port)
        assert wait_for(lambda: feed.malformed == 1, WAIT_S)
        assert feed.problem == f"1 message(s) on plant/{MACHINE}/events were not JSON"
        got = feed.poll()
    finally:
        feed.stop()
    assert feed.status is not None
    assert feed.status.data["state"] == "online"
    assert [(e.topic, e.kind, e.state, e.episode) for e in got] == [
        (f"plant/{MACHINE}/events", "anomaly", "open", "ep1")]
    assert feed.poll() == []  # handed over once
    assert feed.connected is False


def test_mqtt_feed_without_a_broker_says_so_and_stops_promptly() -> None:
    port = free_port()  # nothing listens there
    feed = MqttFeed(MqttConfig(host=LOCALHOST, port=port), MACHINE)
    feed.start()
    try:
        assert wait_for(lambda: feed.problem == f"cannot connect to {LOCALHOST}:{port} "
                        "(retrying)", WAIT_S), feed.problem
        assert feed.connected is False
    finally:
        t0 = time.monotonic()
        feed.stop()
    assert time.monotonic() - t0 < STOP_S
    assert feed.poll() == []


def test_local_feed_reads_new_events_from_the_outbox_once(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    feed = LocalFeed(path, since=time.time())
    assert feed.poll() == []
    assert feed.problem is not None
    assert str(path) in feed.problem  # no store yet: named, not fatal
    outbox = Outbox(path, OutboxConfig(), deliver=False)
    try:
        outbox.add(_event(0, time.time() - 60))  # before the view started
        outbox.add(_event(1, time.time()))
        first = feed.poll()
        outbox.add(_event(2, time.time()))
        second = feed.poll()
    finally:
        outbox.close()
    assert feed.problem is None
    assert [e.episode for e in first] == ["ep1"]
    assert [e.episode for e in second] == ["ep2"]
    assert first[0].topic == str(path)
    assert first[0].data["machine_id"] == MACHINE
