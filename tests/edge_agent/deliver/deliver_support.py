"""Helpers shared by the delivery tests and their child processes (events, configs, waits).

Imported as ``deliver_support`` (``tests/edge_agent/deliver`` is on sys.path while these tests
run, and the child scripts put it there themselves).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from paho.mqtt.client import Client, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_agent.deliver.config import MqttConfig
from edge_agent.deliver.mqtt import MqttUplink
from edge_agent.events import SEVERITY_CRITICAL, Event

LOCALHOST = "127.0.0.1"
MACHINE = "press-7"
POLL_S = 0.02
PUBLISH_WAIT_S = 10.0
# Fast reconnects so that tests about outages take seconds, not minutes.
# The `start_uplink` fixture: ``start_uplink(cfg, outbox, health=None, **kw)``.
UplinkFactory = Callable[..., MqttUplink]
FAST_MQTT = {"backoff_initial_s": 0.1, "backoff_max_s": 0.5, "keepalive_s": 5}


def make_event(
    n: int = 0, *, severity: int = SEVERITY_CRITICAL, kind: str = "anomaly", **kw: Any
) -> Event:
    """A realistic event; ``n`` goes into the detail so tests can tell events apart."""
    fields: dict[str, Any] = {
        "kind": kind, "state": "open", "machine_id": MACHINE, "episode": f"ep{n:06d}",
        "start": 1.7e9 + n, "end": None, "severity": severity, "peak_score": 2.5,
        "p_anomaly": 0.9, "detail": f"event {n}", "created": 1.7e9 + n,
    }
    fields.update(kw)
    return Event(**fields)


def mqtt_config(port: int, **kw: Any) -> MqttConfig:
    return MqttConfig(host=LOCALHOST, port=port, **{**FAST_MQTT, **kw})


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(POLL_S)


def publish(port: int, topic: str, payload: bytes, *, retain: bool = False) -> None:
    """Publish one message at QoS 1 from a separate client (the desk's side of a downlink)
    and return once the broker has acknowledged it."""
    client = Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTv5)
    client.connect(LOCALHOST, port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=retain)
        assert info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS, info.rc
        info.wait_for_publish(PUBLISH_WAIT_S)
        assert info.is_published(), f"the broker did not acknowledge {topic}"
    finally:
        client.disconnect()
        client.loop_stop()
