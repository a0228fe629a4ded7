"""One broker connection of the uplink and what paho's network thread reports about it.

Used by ``edge_agent.deliver.mqtt``. Each connection attempt gets a fresh paho client (see
``mqtt_client``) tagged with a generation number, so a late callback from a client already
given up cannot disturb the next one. Paho's thread only records here (connected, refused,
lost, PUBACK mid and its time) and notifies the shared condition; it never calls back into
paho or the outbox, which keeps the two threads free of lock-order deadlocks (paho holds its
own message lock while it runs ``on_publish``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.deliver.config import MqttConfig
from edge_agent.deliver.mqtt_client import Security, new_client

CONNACK_TIMEOUT_S = 10.0  # a broker that accepts TCP but never answers CONNECT
GOODBYE_ACK_TIMEOUT_S = 2.0  # a clean stop waits this long for the broker to take `offline`
QOS_AT_LEAST_ONCE = 1

# Connection states, written by paho's thread and read by the uplink's worker.
CONNECTING, CONNECTED, REFUSED, LOST = "connecting", "connected", "refused", "lost"


class BrokerLink:
    """Opens and closes connections; holds the state paho's thread reports (under ``cond``)."""

    def __init__(
        self, cfg: MqttConfig, client_id: str, cond: threading.Condition, *,
        will_topic: str, will: bytes,
    ) -> None:
        self._cfg = cfg
        self._client_id = client_id
        self._will_topic = will_topic
        self._will = will
        self.cond = cond
        self.security = Security()
        # Guarded by cond:
        self.state = LOST
        self.acks: list[tuple[int, float]] = []  # (mid, monotonic time of the PUBACK)
        self._gen = 0
        self._refusal = ""

    def open(self) -> Client | str:
        """A connected client, or why there is none. Raises OSError if the broker cannot
        be reached (TCP, DNS, TLS handshake)."""
        with self.cond:
            self._gen += 1
            self.state = CONNECTING
            self.acks.clear()
            gen = self._gen
        client = new_client(
            self._cfg, self._client_id, self.security, will_topic=self._will_topic,
            will=self._will, userdata=gen,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s)
        client.loop_start()
        with self.cond:
            self.cond.wait_for(lambda: self.state != CONNECTING, timeout=CONNACK_TIMEOUT_S)
            state, refusal = self.state, self._refusal
        if state == CONNECTED:
            return client
        self.close(client)
        if state == REFUSED:
            return f"refused: {refusal}"
        if state == LOST:
            return "closed the connection before accepting it"
        return f"no answer to CONNECT within {CONNACK_TIMEOUT_S:g} s"

    def close(self, client: Client, goodbye: tuple[str, bytes] | None = None) -> None:
        """End a session; ``goodbye`` (topic, payload) is published retained first, so the
        broker discards the last will and a dashboard sees a clean stop."""
        if goodbye is not None:
            info = client.publish(*goodbye, qos=QOS_AT_LEAST_ONCE, retain=True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                info.wait_for_publish(GOODBYE_ACK_TIMEOUT_S)
        client.disconnect()
        client.loop_stop()
        with self.cond:
            self.state = LOST

    @property
    def up(self) -> bool:
        """Connected (caller holds ``cond``)."""
        return self.state == CONNECTED

    # -- paho's network thread ------------------------------------------------------------

    def _on_connect(
        self, client: Client, gen: Any, flags: ConnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self.cond:
            if gen != self._gen:
                return
            self.state = REFUSED if reason.is_failure else CONNECTED
            self._refusal = str(reason) if reason.is_failure else ""
            self.cond.notify_all()

    def _on_disconnect(
        self, client: Client, gen: Any, flags: DisconnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self.cond:
            if gen != self._gen:
                return
            if self.state != REFUSED:
                self.state = LOST
            self.cond.notify_all()

    def _on_publish(
        self, client: Client, gen: Any, mid: int, reason: ReasonCode, properties: Properties
    ) -> None:
        now = time.monotonic()
        with self.cond:
            if gen != self._gen:
                return
            self.acks.append((mid, now))
            self.cond.notify_all()
