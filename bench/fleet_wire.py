"""Bytes a delta costs on the wire: the MQTT v5 PUBLISH the gateway's outbox sends, as the
broker receives it.

Used by ``bench/fleet_learning.py`` for its bytes-per-delta curve. The agent publishes a delta
from its outbox on ``<prefix>/<machine>/delta`` at QoS 1 with the outbox's v5 properties
(``edge_agent.deliver.mqtt_client.row_properties``: machine and message id as user properties;
a delta is binary, so no content type). :func:`publish_bytes` counts that packet from the MQTT
5 layout (fixed header, remaining length, topic, packet id, properties, payload);
:func:`measure_on_broker` publishes the same packets through a counting TCP relay
(``bench/ota_fleet.py``'s :class:`ByteRelay`) into a real Mosquitto and reads the bytes the
broker received for each PUBLISH, up to its PUBACK, so the computed figure is checked.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from paho.mqtt.client import Client, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.deliver.mqtt_client import row_properties

TOPIC_PREFIX = "edge"  # the agent's default [mqtt] topic_prefix
TOPIC_LEAF = "delta"
FIXED_HEADER_BYTES = 1  # packet type and flags
TOPIC_LENGTH_BYTES = 2
PACKET_ID_BYTES = 2  # QoS 1
VARINT_LIMIT = 128  # MQTT's variable byte integer: 7 bits per byte
MESSAGE_ID = "0" * 32  # an outbox message id (uuid4 hex) has this length
CONNECT_TIMEOUT_S = 10.0
PUBACK_TIMEOUT_S = 10.0
SETTLE_S = 0.05  # the relay's thread forwards and counts after the broker has replied


def _varint_bytes(value: int) -> int:
    n = 1
    while value >= VARINT_LIMIT:
        value //= VARINT_LIMIT
        n += 1
    return n


def delta_topic(machine_id: str, prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}/{machine_id}/{TOPIC_LEAF}"


def publish_bytes(machine_id: str, payload: bytes, prefix: str = TOPIC_PREFIX) -> int:
    """Size of the QoS 1 MQTT v5 PUBLISH packet the outbox sends for ``payload``."""
    topic = delta_topic(machine_id, prefix).encode("utf-8")
    props = row_properties(payload, machine_id=machine_id, row_id=MESSAGE_ID, expiry_s=None)
    remaining = TOPIC_LENGTH_BYTES + len(topic) + PACKET_ID_BYTES + len(props.pack()) + len(payload)
    return FIXED_HEADER_BYTES + _varint_bytes(remaining) + remaining


def measure_on_broker(payloads: Mapping[str, tuple[str, bytes]], work: Path) -> dict[str, int]:
    """Publish each ``label -> (machine_id, payload)`` to a local Mosquitto through a counting
    relay; the bytes the broker received per PUBLISH. Empty when Mosquitto is not installed."""
    from common import start_broker
    from ota_fleet import ByteRelay

    work.mkdir(parents=True, exist_ok=True)
    proc, port = start_broker(work)
    if proc is None or port is None:
        return {}
    relay = ByteRelay(port)
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-wire-{uuid.uuid4().hex[:8]}",
        protocol=MQTTv5,
    )
    measured: dict[str, int] = {}
    try:
        client.connect("127.0.0.1", relay.port)
        client.loop_start()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(SETTLE_S)
        for label, (machine_id, payload) in payloads.items():
            time.sleep(SETTLE_S)
            before = relay.up
            props = row_properties(payload, machine_id=machine_id, row_id=MESSAGE_ID, expiry_s=None)
            info = client.publish(delta_topic(machine_id), payload, qos=1, properties=props)
            info.wait_for_publish(PUBACK_TIMEOUT_S)
            time.sleep(SETTLE_S)
            measured[label] = relay.up - before
    finally:
        client.loop_stop()
        client.disconnect()
        relay.close()
        proc.terminate()
        proc.wait()
    return measured
