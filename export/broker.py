"""The desk's own MQTT session, for ``export publish`` and ``export fleet``.

Sits on the desk, at the far end of the fleet's broker from the gateways' uplinks. It is
configured like a gateway (an :class:`~edge_agent.deliver.config.MqttConfig` built from the
command line, with the option names of the agent's ``[mqtt]`` table) and reuses the uplink's
client factory, so TLS, client certificates and password files behave, and fail, the same way.
It speaks MQTT v5 with QoS 1 and waits for every PUBACK: a publish the broker refuses (its
ACL denies the topic) is an error naming the topic, never a silent loss.

Messages that arrive on a subscription go to :attr:`DeskLink.inbox`; :meth:`retained`
collects what the broker holds retained under some filters.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, MQTTMessageInfo
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.deliver.config import MqttConfig
from edge_agent.deliver.mqtt_client import load_security, new_client
from export.errors import ExportError

QOS_AT_LEAST_ONCE = 1
QOS_AT_MOST_ONCE = 0
CONNACK_TIMEOUT_S = 10.0  # TCP, TLS and CONNACK together
SUBACK_TIMEOUT_S = 10.0
DISCONNECT_TIMEOUT_S = 2.0
RETAINED_QUIET_S = 0.5  # the broker sends retained messages at once on subscribe: a pause ends them
CLIENT_ID_HEX = 8


class BrokerError(ExportError):
    """The broker cannot be reached, refused us, refused a publish, or went away."""


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retained: bool  # sent because it was retained when we subscribed (not a live publish)


class DeskLink:
    """One connection to the broker, opened by :meth:`connect` (or ``with``)."""

    def __init__(self, cfg: MqttConfig, client_id: str | None = None) -> None:
        self.cfg = cfg
        self.client_id = client_id or f"export-{uuid.uuid4().hex[:CLIENT_ID_HEX]}"
        self.inbox: queue.Queue[Message] = queue.Queue()
        self._cond = threading.Condition()
        self._connack: ReasonCode | None = None
        self._connected = False
        self._lost: str | None = None
        self._acks: dict[int, ReasonCode] = {}
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._client: Client | None = None

    @property
    def where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    @property
    def lost(self) -> str | None:
        """Why the connection went away, or None while it is up."""
        with self._cond:
            return self._lost

    # -- connection ------------------------------------------------------------------------
    def connect(self) -> DeskLink:
        security = load_security(self.cfg)  # ConfigError names a bad password or TLS file
        client = new_client(
            self.cfg, self.client_id, security, will_topic="unused", will=b"", userdata=None
        )
        client.will_clear()  # the desk is no gateway: nobody needs to hear when it leaves
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        try:
            client.connect(
                self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s, clean_start=True
            )
        except (OSError, ValueError) as exc:
            raise BrokerError(f"broker {self.where} unreachable: {exc}") from None
        client.loop_start()
        self._client = client
        with self._cond:
            self._cond.wait_for(lambda: self._connack is not None, CONNACK_TIMEOUT_S)
            connack, lost = self._connack, self._lost
        if connack is None or connack.is_failure:
            self.close()
            why = f"refused the connection: {connack}" if connack else (
                lost or f"no answer within {CONNACK_TIMEOUT_S:g} s"
            )
            raise BrokerError(f"broker {self.where} {why}")
        return self

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.disconnect()
            with self._cond:
                self._cond.wait_for(lambda: not self._connected, DISCONNECT_TIMEOUT_S)
        finally:
            client.loop_stop()

    def __enter__(self) -> DeskLink:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> Client:
        if self._client is None:
            raise BrokerError(f"not connected to broker {self.where}")
        return self._client

    # -- publishing ------------------------------------------------------------------------
    def publish(self, messages: Iterable[tuple[str, bytes]], *, retain: bool = True) -> int:
        """Publish every ``(topic, payload)`` at QoS 1 and wait for all their PUBACKs.

        paho keeps ``max_inflight`` in flight and queues the rest. Waits at most
        ``ack_timeout_s`` without any acknowledgement. Returns the payload bytes sent.

        The first publish is acknowledged before the rest go out: a broker that refuses it
        (an ACL) may close the connection right after its PUBACK (Mosquitto 2.0 does), and a
        second publish written into the closing socket could lose that PUBACK, and with it
        the reason, to a bare "disconnected" (seen under load).
        """
        client = self._live()
        pending: dict[int, str] = {}
        sent = 0
        for i, (topic, payload) in enumerate(messages):
            if i == 1:
                self._await_acks(pending)
                pending.clear()
            info: MQTTMessageInfo = client.publish(
                topic, payload, qos=QOS_AT_LEAST_ONCE, retain=retain
            )
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # A broker may drop the connection right after refusing an earlier publish
                # (Mosquitto 2.0 does, after a v5 PUBACK 0x87): that refusal is the cause.
                self._raise_refusals(pending)
                lost = f" ({self.lost})" if self.lost else ""
                raise BrokerError(f"cannot publish {topic} to {self.where}: {info.rc.name}{lost}")
            pending[info.mid] = topic
            sent += len(payload)
        self._await_acks(pending)
        return sent

    def _raise_refusals(self, pending: dict[int, str]) -> None:
        """Raise for the first publish in ``pending`` the broker has already refused."""
        with self._cond:
            refused = [(m, self._acks[m]) for m in pending if m in self._acks]
        for mid, reason in refused:
            if reason.is_failure:
                raise BrokerError(
                    f"broker {self.where} refused the publish to {pending[mid]}: {reason}"
                )

    def _await_acks(self, pending: dict[int, str]) -> None:
        left = dict(pending)
        while left:
            with self._cond:
                got = self._cond.wait_for(
                    lambda: self._lost is not None or any(m in self._acks for m in left),
                    self.cfg.ack_timeout_s,
                )
                done = {m: self._acks.pop(m) for m in list(left) if m in self._acks}
                lost = self._lost
            for mid, reason in done.items():
                topic = left.pop(mid)
                if reason.is_failure:
                    raise BrokerError(
                        f"broker {self.where} refused the publish to {topic}: {reason}"
                    )
            if left and lost is not None:
                raise BrokerError(f"lost broker {self.where} while publishing: {lost}")
            if left and not got:
                first = next(iter(left.values()))
                raise BrokerError(
                    f"broker {self.where} acknowledged nothing for {self.cfg.ack_timeout_s:g} s; "
                    f"{len(left)} publishes unacknowledged (first {first})"
                )

    # -- subscribing -----------------------------------------------------------------------
    def subscribe(self, filters: Sequence[str], qos: int = QOS_AT_LEAST_ONCE) -> None:
        """Subscribe and wait for the SUBACK; what arrives goes to :attr:`inbox`."""
        client = self._live()
        rc, mid = client.subscribe([(f, qos) for f in filters])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerError(f"cannot subscribe to {list(filters)} on {self.where}: {rc.name}")
        with self._cond:
            ok = self._cond.wait_for(
                lambda: mid in self._subacks or self._lost is not None, SUBACK_TIMEOUT_S
            )
            codes = self._subacks.pop(mid, [])
        if not ok or len(codes) != len(filters):
            raise BrokerError(f"broker {self.where} did not acknowledge subscribing to {filters}")
        refused = [f"{f} ({c})" for f, c in zip(filters, codes, strict=True) if c.is_failure]
        if refused:
            raise BrokerError(f"broker {self.where} refused the subscription to {refused}")

    def retained(
        self, filters: Sequence[str], *, max_wait_s: float, qos: int = QOS_AT_LEAST_ONCE
    ) -> dict[str, bytes]:
        """What the broker holds retained under ``filters``: subscribe, then collect until
        nothing arrives for :data:`RETAINED_QUIET_S` (at most ``max_wait_s``). Live messages
        that arrive meanwhile stay in :attr:`inbox` for the caller."""
        self.subscribe(filters, qos)
        found: dict[str, bytes] = {}
        live: list[Message] = []
        deadline = time.monotonic() + max_wait_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self.inbox.get(timeout=min(RETAINED_QUIET_S, left))
            except queue.Empty:
                break
            if msg.retained:
                found[msg.topic] = msg.payload
            else:
                live.append(msg)
        for msg in live:
            self.inbox.put(msg)
        return found

    # -- paho's network thread -------------------------------------------------------------
    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._connack = reason
            self._connected = not reason.is_failure
            self._cond.notify_all()

    def _on_disconnect(
        self, client: Client, userdata: Any, flags: DisconnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._connected = False
            self._lost = f"disconnected ({reason})"
            self._cond.notify_all()

    def _on_publish(
        self, client: Client, userdata: Any, mid: int, reason: ReasonCode, properties: Properties
    ) -> None:
        with self._cond:
            self._acks[mid] = reason
            self._cond.notify_all()

    def _on_subscribe(
        self, client: Client, userdata: Any, mid: int, codes: list[ReasonCode],
        properties: Properties,
    ) -> None:
        with self._cond:
            self._subacks[mid] = codes
            self._cond.notify_all()

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        self.inbox.put(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))
