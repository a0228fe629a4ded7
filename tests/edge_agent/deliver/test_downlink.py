"""The downlink against a real Mosquitto: subscriptions kept across connections, retained
messages on subscribe, handler faults, oversized messages and subscriptions the broker refuses.

The desk's side is a plain paho client publishing at QoS 1 (``deliver_support.publish``); the
gateway's side is the real uplink with a real outbox, as the agent runs it.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker import Mosquitto, Subscriber
from deliver_support import (
    MACHINE,
    UplinkFactory,
    make_event,
    mqtt_config,
    publish,
    wait_until,
)

from edge_agent.deliver.downlink import MAX_INBOUND_BYTES, MAX_PACKET_BYTES, Inbound
from edge_agent.deliver.mqtt import MqttUplink
from edge_agent.deliver.outbox import Outbox

DEPLOY = f"edge/ota/machine/{MACHINE}/deployment"
GROUP = "edge/ota/group/line-1/deployment"
BLOB = "edge/ota/blob/0f0f"
BLOBS = f"{BLOB}/+"
EVENTS = f"edge/{MACHINE}/events"
WAIT_S = 15.0
NOT_AUTHORIZED = 0x87
DYNSEC_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")


class Inbox:
    """A handler that keeps what it is given (called on paho's network thread)."""

    def __init__(self, on_message: Callable[[Inbound], None] | None = None) -> None:
        self.got: list[Inbound] = []
        self._cond = threading.Condition()
        self._on_message = on_message

    def __call__(self, msg: Inbound) -> None:
        with self._cond:
            self.got.append(msg)
            self._cond.notify_all()
        if self._on_message is not None:
            self._on_message(msg)

    def wait_for(self, n: int, what: str = "messages") -> list[Inbound]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.got) >= n, WAIT_S)
            got = list(self.got)
        assert ok, f"timed out waiting for {n} {what}; got {[m.payload[:20] for m in got]}"
        return got

    def payloads(self) -> list[bytes]:
        with self._cond:
            return [m.payload for m in self.got]


def wait_active(uplink: MqttUplink, *filters: str) -> None:
    """Until the broker has granted ``filters``: only then is a live message sure to reach
    them (the desk's publish travels on another connection)."""
    wait_until(lambda: set(filters) <= set(uplink.active_subscriptions()), WAIT_S,
               f"the SUBACK for {filters}")


@pytest.fixture
def unstarted(mosquitto: Mosquitto, outbox: Outbox) -> Iterator[MqttUplink]:
    """An uplink not started yet (the test starts it), stopped at teardown."""
    uplink = MqttUplink(mqtt_config(mosquitto.port), MACHINE, outbox, dict)
    yield uplink
    uplink.stop(0.0)


def test_subscribed_before_start_gets_the_retained_then_live_messages(
    mosquitto: Mosquitto, unstarted: MqttUplink
) -> None:
    publish(mosquitto.port, DEPLOY, b"release 1", retain=True)
    deploy, group = Inbox(), Inbox()
    unstarted.subscribe(DEPLOY, deploy)
    unstarted.subscribe(GROUP, group)
    unstarted.start()
    (first,) = deploy.wait_for(1)
    assert first == Inbound(DEPLOY, b"release 1", retain=True)
    wait_active(unstarted, DEPLOY, GROUP)
    publish(mosquitto.port, GROUP, b"group release")
    (live,) = group.wait_for(1)
    assert live == Inbound(GROUP, b"group release", retain=False)
    stats = unstarted.stats()
    assert stats["inbound_received"] == 2
    assert stats["subscribe_refused"] == 0
    assert deploy.payloads() == [b"release 1"]  # a live message on another filter only


def test_subscribe_after_start_from_a_handler_and_unsubscribe(
    mosquitto: Mosquitto, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    """The OTA flow: a deployment arrives, its handler subscribes to the bundle's chunks
    (on paho's thread), and the retained chunks follow."""
    for i in range(3):
        publish(mosquitto.port, f"{BLOB}/{i}", f"chunk {i}".encode(), retain=True)
    uplink = start_uplink(mqtt_config(mosquitto.port), outbox)
    wait_until(lambda: uplink.connected, WAIT_S, "a connection")
    assert (uplink.topic_prefix, uplink.machine_id) == ("edge", MACHINE)
    chunks = Inbox()
    deploy = Inbox(on_message=lambda _: uplink.subscribe(BLOBS, chunks))
    uplink.subscribe(DEPLOY, deploy)
    wait_active(uplink, DEPLOY)
    publish(mosquitto.port, DEPLOY, b"release 2")
    deploy.wait_for(1)
    got = chunks.wait_for(3, "chunks")
    assert sorted(m.payload for m in got) == [b"chunk 0", b"chunk 1", b"chunk 2"]
    assert all(m.retain for m in got)

    uplink.unsubscribe(DEPLOY)
    uplink.unsubscribe("edge/never/subscribed")  # ignored
    assert DEPLOY not in uplink.active_subscriptions()
    # The broker handles one client's packets in order: once GROUP is granted, the
    # UNSUBSCRIBE sent before it has been handled too.
    group = Inbox()
    uplink.subscribe(GROUP, group)
    wait_active(uplink, GROUP)
    publish(mosquitto.port, DEPLOY, b"release 3")
    # Routed before this one is published (publish waits for the PUBACK), so "release 3"
    # would reach the gateway first if DEPLOY were still subscribed.
    publish(mosquitto.port, GROUP, b"after it")
    group.wait_for(1)
    assert deploy.payloads() == [b"release 2"]


def test_subscriptions_are_made_again_after_the_broker_restarts(
    mosquitto: Mosquitto, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    publish(mosquitto.port, DEPLOY, b"release 1", retain=True)
    deploy = Inbox()
    uplink = start_uplink(mqtt_config(mosquitto.port), outbox)
    uplink.subscribe(DEPLOY, deploy)
    deploy.wait_for(1)
    mosquitto.restart()  # persistence keeps the retained deployment, not our session
    again = deploy.wait_for(2, "the retained deployment again")
    assert again[1] == Inbound(DEPLOY, b"release 1", retain=True)
    assert uplink.stats()["reconnects"] >= 1
    publish(mosquitto.port, DEPLOY, b"release 2")
    assert deploy.wait_for(3)[2] == Inbound(DEPLOY, b"release 2", retain=False)


def test_a_failing_handler_is_logged_and_counted_and_delivery_goes_on(
    mosquitto: Mosquitto, outbox: Outbox, start_uplink: UplinkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fragile(msg: Inbound) -> None:
        if msg.payload == b"bad":
            raise ValueError("cannot parse the deployment")

    deploy = Inbox(on_message=fragile)
    uplink = start_uplink(mqtt_config(mosquitto.port), outbox)
    uplink.subscribe(DEPLOY, deploy)
    wait_active(uplink, DEPLOY)
    with caplog.at_level(logging.ERROR, "edge_agent.deliver.downlink"):
        publish(mosquitto.port, DEPLOY, b"bad")
        publish(mosquitto.port, DEPLOY, b"good")
        deploy.wait_for(2)
    stats = uplink.stats()
    assert stats["inbound_handler_errors"] == 1
    assert stats["inbound_received"] == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert repr(DEPLOY) in errors[0].getMessage()
    assert "cannot parse the deployment" in caplog.text  # the traceback is logged
    # The uplink is unharmed: same connection, and events still go out.
    event = make_event(1)
    with Subscriber(mosquitto.port, EVENTS) as sub:
        outbox.add(event)
        uplink.wake()
        (msg,) = sub.wait_for(1, WAIT_S)
    assert msg.json()["id"] == event.id
    assert uplink.stats()["connects"] == 1


def test_oversized_payloads_are_dropped_and_logged_with_their_topic(
    mosquitto: Mosquitto, outbox: Outbox, start_uplink: UplinkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    deploy = Inbox()
    uplink = start_uplink(mqtt_config(mosquitto.port), outbox)
    uplink.subscribe(DEPLOY, deploy)
    wait_active(uplink, DEPLOY)
    with caplog.at_level(logging.WARNING, "edge_agent.deliver.downlink"):
        publish(mosquitto.port, DEPLOY, b"x" * (MAX_INBOUND_BYTES + 1))  # read, then dropped
        publish(mosquitto.port, DEPLOY, b"y" * (MAX_PACKET_BYTES + 1))  # the broker drops it
        publish(mosquitto.port, DEPLOY, b"small")
        deploy.wait_for(1)
    assert deploy.payloads() == [b"small"]
    stats = uplink.stats()
    assert stats["inbound_dropped"] == 1
    assert stats["inbound_received"] == 1
    assert stats["connects"] == 1  # not a reason to drop the connection
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert repr(DEPLOY) in warning
    assert str(MAX_INBOUND_BYTES + 1) in warning


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/b#", "a+/b", "x\0y"])
def test_an_invalid_filter_is_refused_at_once(unstarted: MqttUplink, bad: str) -> None:
    with pytest.raises(ValueError, match="cannot subscribe to MQTT filter"):
        unstarted.subscribe(bad, Inbox())


@pytest.fixture
def dynsec_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """Mosquitto with the dynamic-security plugin: anonymous clients may subscribe to their
    own machine's deployments only. (Mosquitto 2.0's ``acl_file`` grants every subscription
    and filters at delivery, so only a plugin makes the broker say no in the SUBACK.)"""
    if not DYNSEC_PLUGIN.exists():
        pytest.skip(f"{DYNSEC_PLUGIN} is not installed (it comes with the mosquitto package)")
    config = {
        "defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True,
                             "subscribe": False, "unsubscribe": True},
        "clients": [],
        "groups": [{"groupname": "anonymous", "roles": [{"rolename": "gateway"}],
                    "clients": []}],
        "anonymousGroup": "anonymous",
        "roles": [{"rolename": "gateway", "acls": [
            {"acltype": "subscribePattern", "topic": "edge/ota/machine/#", "priority": 0,
             "allow": True},
        ]}],
    }
    conf = tmp_path / "dynamic-security.json"
    conf.write_text(json.dumps(config))
    broker = Mosquitto(tmp_path / "broker", extra=[
        f"plugin {DYNSEC_PLUGIN}", f"plugin_opt_config_file {conf}",
    ])
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(tmp_path / "broker", ignore_errors=True)


def test_a_subscription_the_broker_refuses_is_logged_counted_and_the_rest_work(
    dynsec_broker: Mosquitto, outbox: Outbox, start_uplink: UplinkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    deploy, group = Inbox(), Inbox()
    with caplog.at_level(logging.ERROR, "edge_agent.deliver.downlink"):
        uplink = start_uplink(mqtt_config(dynsec_broker.port), outbox)
        uplink.subscribe(GROUP, group)  # not allowed
        uplink.subscribe(DEPLOY, deploy)  # allowed
        wait_until(lambda: uplink.stats()["subscribe_refused"] >= 1, WAIT_S, "a refusal")
        wait_active(uplink, DEPLOY)
    assert uplink.active_subscriptions() == [DEPLOY]
    publish(dynsec_broker.port, DEPLOY, b"release 1")
    deploy.wait_for(1)
    stats = uplink.stats()
    assert stats["subscribe_refused"] == 1
    refusal = stats["last_subscribe_refusal"]
    assert refusal is not None
    assert refusal["topic"] == GROUP
    assert refusal["reason_code"] == NOT_AUTHORIZED
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert repr(GROUP) in error
    assert "0x87 Not authorized" in error
    assert group.payloads() == []
