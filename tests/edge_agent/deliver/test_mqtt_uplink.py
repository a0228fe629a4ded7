"""The MQTT uplink against a real Mosquitto: order, acks, status topic, outages, last will."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, Received, Subscriber
from deliver_support import MACHINE, UplinkFactory, make_event, mqtt_config, wait_until

from edge_agent.deliver.config import OutboxConfig
from edge_agent.deliver.outbox import Outbox, Pending

ROOT = Path(__file__).resolve().parents[3]
CHILD = Path(__file__).with_name("child_uplink.py")
EVENTS = f"edge/{MACHINE}/events"
STATUS = f"edge/{MACHINE}/status"
DELIVERY_WAIT_S = 15.0
WAKE_LATENCY_MAX_S = 0.5  # an event must not wait for a heartbeat or poll interval
QUIET_HEARTBEAT_S = 60.0  # long enough never to fire during a test
BROKER_DOWN_S = 60.0  # the fault test's outage
EVENT_EVERY_S = 0.05  # the fault test's event rate: 20 per second


def _ids(msgs: list[Received]) -> list[str]:
    return [m.json()["id"] for m in msgs]


def _first_occurrences(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def test_delivers_in_order_and_deletes_only_acked(
    mosquitto: Mosquitto, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    events = [make_event(n) for n in range(60)]
    for e in events:
        outbox.add(e)
    acked: list[str] = []
    with Subscriber(mosquitto.port, EVENTS) as sub:
        uplink = start_uplink(
            mqtt_config(mosquitto.port, max_inflight=4), outbox,
            on_ack=lambda eid, t: acked.append(eid),
        )
        msgs = sub.wait_for(len(events), DELIVERY_WAIT_S)
        wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "an empty outbox")
    assert _ids(msgs) == [e.id for e in events]
    assert [m.payload for m in msgs] == [e.to_json() for e in events]
    assert sorted(acked) == sorted(e.id for e in events)
    stats = uplink.stats()
    assert stats["acked"] == len(events)
    assert stats["connected"] is True
    assert stats["reconnects"] == 0
    assert isinstance(stats["last_ack_latency_s"], float)
    assert [s.delivery for s in outbox.recent(100)] == ["delivered"] * len(events)


def test_wake_sends_a_new_event_at_once(
    mosquitto: Mosquitto, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    with Subscriber(mosquitto.port, EVENTS) as sub:
        uplink = start_uplink(mqtt_config(mosquitto.port, heartbeat_s=QUIET_HEARTBEAT_S), outbox)
        wait_until(lambda: uplink.connected, DELIVERY_WAIT_S, "a connection")
        time.sleep(0.2)  # let the worker settle into its idle wait
        event = make_event(1)
        t0 = time.monotonic()
        outbox.add(event)
        uplink.wake()
        msgs = sub.wait_for(1, DELIVERY_WAIT_S)
        latency = time.monotonic() - t0
    assert _ids(msgs) == [event.id]
    assert latency < WAKE_LATENCY_MAX_S


def test_status_birth_heartbeat_and_clean_offline(
    mosquitto: Mosquitto, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    health = {"windows_scored": 1234, "sources_up": 2}
    with Subscriber(mosquitto.port, STATUS) as status, Subscriber(mosquitto.port, EVENTS) as ev:
        uplink = start_uplink(
            mqtt_config(mosquitto.port, heartbeat_s=0.3), outbox, health=lambda: health
        )
        msgs = status.wait_until(lambda m: len(m) >= 3, DELIVERY_WAIT_S, "birth + heartbeats")
        birth, beat = msgs[0].json(), msgs[1].json()
        assert birth["state"] == "online"
        assert birth["machine_id"] == MACHINE
        assert "windows_scored" not in birth  # the birth goes out before any heartbeat
        assert beat["state"] == "online"
        assert beat["windows_scored"] == 1234
        assert beat["sources_up"] == 2
        assert beat["outbox_depth"] == 0
        assert beat["outbox_dropped"] == 0
        assert beat["mqtt"]["connected"] is True
        # A dashboard that subscribes now gets the latest heartbeat, retained.
        with Subscriber(mosquitto.port, STATUS) as late:
            retained = late.wait_for(1, DELIVERY_WAIT_S)[0]
        assert retained.retain
        assert retained.json()["windows_scored"] == 1234
        # Events added just before a stop are drained before `offline`.
        events = [make_event(n) for n in range(20)]
        for e in events:
            outbox.add(e)
        uplink.stop(drain_timeout_s=5.0)
        assert outbox.depth() == 0
        assert _ids(ev.wait_for(len(events), DELIVERY_WAIT_S)) == [e.id for e in events]
        assert uplink.connected is False
    with Subscriber(mosquitto.port, STATUS) as late:
        final = late.wait_for(1, DELIVERY_WAIT_S)[0]
    assert final.retain
    assert final.json()["state"] == "offline"
    assert final.json()["reason"] == "shutdown"


def test_last_will_says_offline_when_the_agent_is_killed(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    with Subscriber(mosquitto.port, STATUS) as status:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(mosquitto.port), str(tmp_path / "events.db")],
            cwd=ROOT, stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(ROOT)},
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "connected"
            status.wait_until(
                lambda m: any(x.json()["state"] == "online" for x in m), DELIVERY_WAIT_S,
                "online",
            )
        finally:
            proc.send_signal(signal.SIGKILL)  # no goodbye: only the broker can tell
            proc.wait()
        msgs = status.wait_until(
            lambda m: m[-1].json()["state"] == "offline", DELIVERY_WAIT_S, "the last will"
        )
    assert msgs[-1].json()["reason"] == "connection lost"
    with Subscriber(mosquitto.port, STATUS) as late:
        retained = late.wait_for(1, DELIVERY_WAIT_S)[0]
    assert retained.retain
    assert retained.json()["state"] == "offline"


def test_broker_down_at_start_then_up_delivers_everything_in_order(
    tmp_path: Path, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    # A persistent subscriber whose session the broker keeps while it is down, so that
    # nothing the uplink sends right after the broker returns can slip past the test.
    sub = Subscriber(broker.port, EVENTS, persistent=True, client_id="test-down-at-start")
    sub.start()
    broker.stop()
    try:
        events = [make_event(n) for n in range(30)]
        for e in events[:10]:
            outbox.add(e)
        t0 = time.monotonic()
        uplink = start_uplink(mqtt_config(broker.port), outbox)
        assert time.monotonic() - t0 < 0.5  # start() never waits for the broker
        for e in events[10:]:
            outbox.add(e)
            uplink.wake()
        time.sleep(1.0)
        assert not uplink.connected
        assert outbox.depth() == len(events)
        assert uplink.stats()["connect_failures"] >= 2  # it kept retrying
        broker.start()
        msgs = sub.wait_for(len(events), DELIVERY_WAIT_S)
        wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "an empty outbox")
        assert _first_occurrences(_ids(msgs)) == [e.id for e in events]
    finally:
        sub.stop()
        broker.stop()


def test_events_are_deleted_only_after_the_puback(
    mosquitto: Mosquitto, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    uplink = start_uplink(mqtt_config(mosquitto.port, max_inflight=100), outbox)
    wait_until(lambda: uplink.connected, DELIVERY_WAIT_S, "a connection")
    mosquitto.pause()
    try:
        for n in range(10):
            outbox.add(make_event(n))
        uplink.wake()
        wait_until(lambda: uplink.stats()["published"] == 10, DELIVERY_WAIT_S, "publishing")
        time.sleep(0.3)
        assert outbox.depth() == 10  # sent but not acknowledged: still ours
        assert uplink.stats()["acked"] == 0
    finally:
        mosquitto.resume()
    wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "the PUBACKs")
    assert uplink.stats()["acked"] == 10


def test_unacknowledged_events_are_resent_in_order_after_a_loss(
    tmp_path: Path, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    sub = Subscriber(broker.port, EVENTS, persistent=True, client_id="test-resend")
    sub.start()
    try:
        broker.restart()  # a clean stop saves the subscriber's session to disk
        events = [make_event(n) for n in range(12)]
        for e in events[:4]:
            outbox.add(e)
        uplink = start_uplink(mqtt_config(broker.port, max_inflight=6), outbox)
        sub.wait_for(4, DELIVERY_WAIT_S)
        wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "the first acks")
        broker.pause()
        for e in events[4:]:
            outbox.add(e)
        uplink.wake()
        wait_until(lambda: uplink.stats()["inflight"] == 6, DELIVERY_WAIT_S, "a full window")
        broker.kill()  # the 6 in flight are never acknowledged
        broker.start()
        msgs = sub.wait_for(len(events), DELIVERY_WAIT_S)
        wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "an empty outbox")
        assert _first_occurrences(_ids(msgs)) == [e.id for e in events]
        assert uplink.stats()["reconnects"] >= 1
    finally:
        sub.stop()
        broker.stop()


def test_outage_during_a_run_resends_from_the_oldest_pending(
    tmp_path: Path, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    _fault_run(tmp_path, outbox, start_uplink, down_s=1.5, before_s=1.0, after_s=1.0)


@pytest.mark.slow
def test_fault_broker_stopped_for_a_minute_loses_nothing(
    tmp_path: Path, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    _fault_run(tmp_path, outbox, start_uplink, down_s=BROKER_DOWN_S, before_s=3.0, after_s=3.0)


def _fault_run(
    tmp_path: Path, outbox: Outbox, start_uplink: UplinkFactory,
    *, down_s: float, before_s: float, after_s: float,
) -> None:
    """Events flow continuously; the broker stops for ``down_s`` and comes back on the same
    port. Every event must arrive, first occurrences in order (copies are allowed)."""
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    sub = Subscriber(broker.port, EVENTS, persistent=True, client_id="test-fault")
    sub.start()
    added: list[str] = []
    stop_adding = threading.Event()
    try:
        uplink = start_uplink(mqtt_config(broker.port, max_inflight=8), outbox)

        def produce() -> None:
            n = 0
            while not stop_adding.wait(EVENT_EVERY_S):
                e = make_event(n)
                outbox.add(e)
                uplink.wake()
                added.append(e.id)
                n += 1

        producer = threading.Thread(target=produce, name="test-producer")
        producer.start()
        time.sleep(before_s)
        broker.stop()
        port = broker.port
        during = len(added)
        time.sleep(down_s)
        assert len(added) > during  # events kept coming while the broker was away
        assert outbox.depth() > 0
        broker.start()
        assert broker.port == port
        time.sleep(after_s)
        stop_adding.set()
        producer.join()
        # Not a count: re-sends after the outage may duplicate some, and the count would be
        # reached before the last event arrives.
        msgs = sub.wait_until(lambda m: set(_ids(m)) >= set(added), DELIVERY_WAIT_S + down_s,
                              "every event")
        wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "an empty outbox")
        got = _ids(msgs)
        assert _first_occurrences(got) == added
        assert uplink.stats()["reconnects"] >= 1
    finally:
        stop_adding.set()
        sub.stop()
        broker.stop()


def test_stop_without_a_broker_returns_promptly_and_keeps_events(
    tmp_path: Path, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    broker = Mosquitto(tmp_path / "never-started")
    outbox.add(make_event(1))
    uplink = start_uplink(mqtt_config(broker.port), outbox)
    time.sleep(0.3)
    t0 = time.monotonic()
    uplink.stop(drain_timeout_s=1.0)
    assert time.monotonic() - t0 < 1.5
    assert outbox.depth() == 1
    assert json.loads(outbox.pending(1)[0].payload)["detail"] == "event 1"


def test_events_stay_local_without_delivery(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "events.db", OutboxConfig(), deliver=False)
    box.add(make_event(1))
    assert box.depth() == 0
    assert box.recent()[0].delivery == "local"
    box.close()


class _FlakyOutbox(Outbox):
    """A real outbox whose ``pending`` fails once, as SQLite can ("disk I/O error")."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.failed = False

    def pending(self, limit: int, after_seq: int = 0) -> list[Pending]:
        if not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("disk I/O error")
        return super().pending(limit, after_seq=after_seq)


def test_an_unexpected_error_restarts_the_worker_and_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path, start_uplink: UplinkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    box = _FlakyOutbox(tmp_path / "events.db", OutboxConfig(), deliver=True)
    try:
        events = [make_event(n) for n in range(5)]
        for e in events:
            box.add(e)
        with Subscriber(mosquitto.port, EVENTS) as sub:
            uplink = start_uplink(mqtt_config(mosquitto.port), box)
            msgs = sub.wait_for(len(events), DELIVERY_WAIT_S)
            wait_until(lambda: box.depth() == 0, DELIVERY_WAIT_S, "an empty outbox")
        assert box.failed
        assert _ids(msgs) == [e.id for e in events]
        health = uplink.health.status()
        assert health["crashes"] == 1
        assert health["running"] is True
        assert health["last_error"] == "OperationalError: disk I/O error"
        assert uplink.stats()["worker_crashes"] == 1
        assert "thread mqtt uplink crashed" in caplog.text
        uplink.stop(0.0)
    finally:
        box.close()
