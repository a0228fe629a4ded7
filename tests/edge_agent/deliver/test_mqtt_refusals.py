"""What the broker says about each publish, against a real Mosquitto speaking MQTT v5.

The fault behind these tests: under MQTT 3.1.1 a broker acknowledges a publish its ACL denies
and drops it, and the outbox deleted the event on that PUBACK (3 published, 3 acked, 0
received). Under v5 the PUBACK carries a reason code: 0x87 Not authorized keeps the event,
0x10 No matching subscribers is a success. Also here: the v5 properties events carry (user
properties, message expiry) and two gateways configured with the same client id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker import Mosquitto, Received, Subscriber
from deliver_support import MACHINE, UplinkFactory, make_event, mqtt_config, wait_until

from edge_agent.deliver.config import OutboxConfig
from edge_agent.deliver.outbox import Outbox
from edge_agent.deliver.status import WILL_REASON
from edge_agent.events import EVENT_SCHEMA_VERSION

EVENTS = f"edge/{MACHINE}/events"
STATUS = f"edge/{MACHINE}/status"
DELIVERY_WAIT_S = 15.0
QUIET_HEARTBEAT_S = 60.0  # only the heartbeat a refusal sends goes out during a test
NOT_AUTHORIZED = 0x87
REFUSED_FOR_S = 1.5  # how long the ACL stays wrong
EXPIRY_S = 1
EXPIRY_WAIT_S = 2.2  # past the expiry, with Mosquitto's whole-second clock
FIGHT_S = 3.0  # how long two gateways with one client id are watched
# Anonymous clients (the gateway and the test's subscribers) may read everything under edge/
# and publish the status topic; the events topic is missing, as in the field report.
ACL_WRONG = "topic read edge/#\ntopic write edge/+/status\n"
ACL_FIXED = ACL_WRONG + "topic write edge/+/events\n"


@dataclass(frozen=True)
class AclBroker:
    broker: Mosquitto
    acl: Path
    hangs_up: bool  # closes the connection after a refusal


def _ids(msgs: list[Received]) -> list[str]:
    return [m.json()["id"] for m in msgs]


@pytest.fixture(params=["hangs up", "keeps the connection"])
def acl_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AclBroker]:
    """Mosquitto 2.0.11 with an unlimited ``max_queued_messages`` (the helper's setting)
    closes the connection after it refuses a QoS 1 publish; with a limit it keeps it."""
    acl = tmp_path / "acl"
    acl.write_text(ACL_WRONG)
    hangs_up = request.param == "hangs up"
    extra = [] if hangs_up else ["max_queued_messages 1000"]
    broker = Mosquitto(tmp_path / "broker", acl_file=acl, extra=extra)
    broker.start()
    yield AclBroker(broker, acl, hangs_up)
    broker.stop()


def test_refused_events_stay_are_reported_and_resume_in_order_once_the_acl_is_fixed(
    acl_broker: AclBroker, outbox: Outbox, start_uplink: UplinkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker, acl = acl_broker.broker, acl_broker.acl
    events = [make_event(n) for n in range(6)]
    for e in events[:3]:
        outbox.add(e)
    with (Subscriber(broker.port, EVENTS) as sub, Subscriber(broker.port, STATUS) as status,
          caplog.at_level(logging.INFO, logger="edge_agent.deliver.mqtt")):
        uplink = start_uplink(mqtt_config(broker.port, heartbeat_s=QUIET_HEARTBEAT_S), outbox)
        wait_until(lambda: uplink.stats()["publish_refused"] >= 1, DELIVERY_WAIT_S,
                   "a refusal")
        for e in events[3:]:
            outbox.add(e)
            uplink.wake()
        time.sleep(REFUSED_FOR_S)
        # Nothing was lost and nothing got through.
        assert outbox.depth() == len(events)
        assert sub.messages == []
        stats = uplink.stats()
        assert stats["acked"] == 0
        refusal = stats["last_refusal"]
        assert refusal is not None
        assert refusal["topic"] == EVENTS
        assert refusal["reason_code"] == NOT_AUTHORIZED
        assert refusal["reason"] == "Not authorized"
        # Retried with backoff (0.1 s doubling to 0.5 s), not in a hot loop.
        assert 2 <= stats["connects"] <= REFUSED_FOR_S / 0.1
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, errors  # throttled
        assert f"'{EVENTS}'" in errors[0]
        assert "0x87 Not authorized" in errors[0]
        assert events[0].id in errors[0]  # the oldest: nothing after it is sent
        # The retained status shows it to a dashboard.
        beat = status.wait_until(lambda m: any("mqtt" in x.json() for x in m),
                                 DELIVERY_WAIT_S, "a heartbeat")
        shown = next(x.json()["mqtt"] for x in beat if "mqtt" in x.json())
        assert shown["publish_refused"] >= 1
        assert shown["last_refusal"]["reason_code"] == NOT_AUTHORIZED
        assert shown["last_refusal"]["topic"] == EVENTS
        if not acl_broker.hangs_up:
            # The uplink closes its connections cleanly: the broker never announces the
            # gateway offline (its last will) just because it retries a refused event.
            assert all(x.json().get("reason") != WILL_REASON for x in status.messages)

        acl.write_text(ACL_FIXED)
        broker.reload()  # the operator's fix; the uplink must notice by itself
        msgs = sub.wait_for(len(events), DELIVERY_WAIT_S)
        wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "an empty outbox")
    assert _ids(msgs) == [e.id for e in events]  # all of them, once, in order
    assert "accepts events on" in caplog.text


def test_no_matching_subscribers_is_a_success(
    mosquitto: Mosquitto, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    for n in range(3):
        outbox.add(make_event(n))
    uplink = start_uplink(mqtt_config(mosquitto.port), outbox)  # nobody subscribes
    wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "an empty outbox")
    stats = uplink.stats()
    assert stats["acked"] == 3
    assert stats["publish_refused"] == 0
    log = mosquitto.log()
    assert f"as edge-agent-{MACHINE} (p5," in log  # connected over MQTT v5
    assert "rc16)" in log  # ... and the PUBACKs said 0x10 No matching subscribers


def test_events_carry_v5_properties(
    mosquitto: Mosquitto, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    event = make_event(1, kind="sensor_fault", channel="p1", reason="stuck")
    outbox.add(event)
    with Subscriber(mosquitto.port, EVENTS, v5=True) as sub:
        start_uplink(mqtt_config(mosquitto.port, event_expiry_s=3600), outbox)
        (msg,) = sub.wait_for(1, DELIVERY_WAIT_S)
    props = dict(msg.user_properties)
    assert props["machine_id"] == MACHINE
    assert props["event_id"] == event.id
    assert props["kind"] == "sensor_fault"
    assert props["schema"] == str(EVENT_SCHEMA_VERSION)
    assert props["state"] == "open"
    assert msg.content_type == "application/json"
    assert msg.expiry_s is not None
    assert 3590 <= msg.expiry_s <= 3600
    assert msg.payload == event.to_json()


def test_event_expiry_lets_the_broker_discard_stale_events(
    tmp_path: Path, outbox: Outbox, start_uplink: UplinkFactory, mosquitto: Mosquitto
) -> None:
    """A subscriber away longer than ``event_expiry_s`` does not get the event; one published
    without expiry after it still arrives (so the first was dropped, not merely late)."""
    client_id = "test-expiry"
    Subscriber(mosquitto.port, EVENTS, persistent=True, client_id=client_id).start().stop()
    stale, fresh = make_event(1), make_event(2)
    outbox.add(stale)
    expiring = start_uplink(mqtt_config(mosquitto.port, event_expiry_s=EXPIRY_S), outbox)
    wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "the expiring event's PUBACK")
    expiring.stop(0.0)
    time.sleep(EXPIRY_WAIT_S)
    outbox.add(fresh)
    start_uplink(mqtt_config(mosquitto.port), outbox)
    wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "the second event's PUBACK")
    with Subscriber(mosquitto.port, EVENTS, persistent=True, client_id=client_id) as sub:
        first = sub.wait_for(1, DELIVERY_WAIT_S)[0]  # queued messages come in order
    assert first.json()["id"] == fresh.id


def test_two_gateways_with_one_client_id_back_off_and_deliver(
    mosquitto: Mosquitto, tmp_path: Path, start_uplink: UplinkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Mosquitto 2.0.11 closes the older connection without a reason (0x8E comes with 2.0.15,
    see ``test_mqtt_broker_faults``): the short-lived connections must still back off."""
    boxes = [Outbox(tmp_path / f"events-{i}.db", OutboxConfig(), deliver=True) for i in (0, 1)]
    try:
        cfg = mqtt_config(mosquitto.port, client_id="gateway-shared")
        with caplog.at_level(logging.WARNING, logger="edge_agent.deliver.mqtt"):
            uplinks = [start_uplink(cfg, box) for box in boxes]
            time.sleep(FIGHT_S)
            connects = sum(u.stats()["connects"] for u in uplinks)
            for i, box in enumerate(boxes):
                box.add(make_event(i))
                uplinks[i].wake()
            wait_until(lambda: sum(b.depth() for b in boxes) == 0, DELIVERY_WAIT_S,
                       "delivery from both")
        # Each kicks the other off on every connect; without backoff that is hundreds per
        # second. With it, each reconnects at most about once per backoff step.
        most = 2 * (FIGHT_S / cfg.backoff_max_s + 5)
        assert 3 <= connects <= most, connects
        assert "client id 'gateway-shared'" in caplog.text
    finally:
        for box in boxes:
            box.close()

