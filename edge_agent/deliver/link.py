"""One broker connection of the uplink and what paho's network thread reports about it.

Used by ``edge_agent.deliver.mqtt``. Each connection attempt gets a fresh paho client (see
``mqtt_client``) tagged with a generation number, so a late callback from a client already
given up cannot disturb the next one. Paho's thread only records here (connected, refused,
lost and the broker's DISCONNECT reason, the broker's Receive Maximum, each PUBACK with its
reason code and time) and notifies the shared condition; it never calls back into paho or the
outbox, which keeps the two threads free of lock-order deadlocks (paho holds its own message
lock while it runs ``on_publish``). Inbound messages and SUBACKs go to the uplink's
``downlink.Downlink``, which the link attaches to each accepted connection so that every
subscription is made again on it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.deliver.config import MqttConfig
from edge_agent.deliver.downlink import MAX_PACKET_BYTES, Downlink
from edge_agent.deliver.mqtt_client import Security, new_client

CONNACK_TIMEOUT_S = 10.0  # a broker that accepts TCP but never answers CONNECT
GOODBYE_ACK_TIMEOUT_S = 2.0  # a clean stop waits this long for the broker to take `offline`
DISCONNECT_TIMEOUT_S = 1.0  # for paho's thread to write what was queued and DISCONNECT
QOS_AT_LEAST_ONCE = 1
RECEIVE_MAXIMUM_DEFAULT = 65535  # v5: a CONNACK without Receive Maximum means this
FAILURE_FROM = 0x80  # v5 reason codes from here on are failures
SESSION_TAKEN_OVER = 0x8E  # v5 DISCONNECT: another connection with our client id arrived

# Connection states, written by paho's thread and read by the uplink's worker.
CONNECTING, CONNECTED, REFUSED, LOST = "connecting", "connected", "refused", "lost"


@dataclass(frozen=True)
class Reason:
    """A v5 reason code as the log shows it: ``0x87 Not authorized``."""

    code: int
    name: str

    @classmethod
    def of(cls, rc: ReasonCode) -> Reason:
        return cls(int(rc.value), str(rc))

    @property
    def failure(self) -> bool:
        """Codes from 0x80 are failures; below are successes, among them 0x10 "No matching
        subscribers", which Mosquitto gives a QoS 1 publish nobody subscribes to."""
        return self.code >= FAILURE_FROM

    def __str__(self) -> str:
        return f"0x{self.code:02X} {self.name}"


@dataclass(frozen=True)
class Puback:
    mid: int
    at: float  # monotonic time it arrived
    reason: Reason


class BrokerLink:
    """Opens and closes connections; holds the state paho's thread reports (under ``cond``)."""

    def __init__(
        self, cfg: MqttConfig, client_id: str, cond: threading.Condition, *,
        will_topic: str, will: bytes, downlink: Downlink,
    ) -> None:
        self._cfg = cfg
        self._downlink = downlink
        self.client_id = client_id
        self._will_topic = will_topic
        self._will = will
        self.cond = cond
        self.security = Security()
        # Guarded by cond:
        self.state = LOST
        self.acks: list[Puback] = []
        self.receive_maximum = RECEIVE_MAXIMUM_DEFAULT
        self.disconnect: Reason | None = None  # why the broker closed it, if it said so
        self._gen = 0
        self._refusal = ""
        self._accepted = False  # the CONNACK of this generation said success

    def open(self) -> Client | str:
        """A connected client, or why there is none. Raises OSError if the broker cannot
        be reached (TCP, DNS, TLS handshake)."""
        with self.cond:
            self._gen += 1
            self.state = CONNECTING
            self.acks.clear()
            self.receive_maximum = RECEIVE_MAXIMUM_DEFAULT
            self.disconnect = None
            self._accepted = False
            gen = self._gen
        client = new_client(
            self._cfg, self.client_id, self.security, will_topic=self._will_topic,
            will=self._will, userdata=gen,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._downlink.on_message
        client.on_subscribe = self._downlink.on_subscribe
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.MaximumPacketSize = MAX_PACKET_BYTES
        # A fresh session every time, gone when the connection goes (session expiry 0).
        client.connect(
            self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s, clean_start=True,
            properties=props,
        )
        client.loop_start()
        with self.cond:
            self.cond.wait_for(lambda: self.state != CONNECTING, timeout=CONNACK_TIMEOUT_S)
            state, refusal, accepted = self.state, self._refusal, self._accepted
        if accepted:
            # Even if already lost again (a broker that kicks us right after CONNACK): the
            # uplink then sees the loss, and the broker's reason, like any other.
            self._downlink.attach(client)
            return client
        self.close(client)
        if state == REFUSED:
            return f"refused: {refusal}"
        if state == LOST:
            return "closed the connection before accepting it"
        return f"no answer to CONNECT within {CONNACK_TIMEOUT_S:g} s"

    def close(self, client: Client, goodbye: tuple[str, bytes, Properties] | None = None) -> None:
        """End a session; ``goodbye`` (topic, payload, properties) is published retained first,
        so the broker discards the last will and a dashboard sees a clean stop."""
        self._downlink.detach(client)
        try:
            if goodbye is not None:
                topic, payload, props = goodbye
                info = client.publish(
                    topic, payload, qos=QOS_AT_LEAST_ONCE, retain=True, properties=props
                )
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    info.wait_for_publish(GOODBYE_ACK_TIMEOUT_S)
            client.disconnect()
            # paho's thread writes what is queued, then DISCONNECT, then reports it; stopping
            # that thread sooner drops them, and the broker, seeing the socket just close,
            # would publish our last will: `offline` although we are about to reconnect.
            with self.cond:
                self.cond.wait_for(lambda: self.state != CONNECTED, timeout=DISCONNECT_TIMEOUT_S)
        finally:
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
            self._accepted = not reason.is_failure
            most = getattr(properties, "ReceiveMaximum", None)
            if isinstance(most, int) and most > 0:
                self.receive_maximum = most
            self.cond.notify_all()

    def _on_disconnect(
        self, client: Client, gen: Any, flags: DisconnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self.cond:
            if gen != self._gen:
                return
            if flags.is_disconnect_packet_from_server:
                self.disconnect = Reason.of(reason)
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
            self.acks.append(Puback(mid, now, Reason.of(reason)))
            self.cond.notify_all()
