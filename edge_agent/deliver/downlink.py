"""The downlink: what the gateway subscribes to on the broker, and handing what arrives over.

Part of the MQTT uplink (``edge_agent.deliver.mqtt``), which owns one :class:`Downlink` and
exposes ``subscribe`` / ``unsubscribe``; its callers are the gateway's command consumers
(the OTA updater's deployments and bundle chunks). The registry of filters outlives every
connection: each connection is a fresh client with a fresh session, so the link calls
:meth:`Downlink.attach` after every successful CONNACK and all filters are subscribed again
(QoS 1). The broker then sends each filter's retained messages again, which is how a gateway
resumes an interrupted download; handlers must therefore accept a message they have seen.

Threads: ``subscribe`` and ``unsubscribe`` may be called from any thread, before or after the
uplink starts (before, they only record the filter). Handlers run on paho's network thread,
one message at a time, and must not block (no disk-heavy work, no waiting on the network): a
slow handler holds up every inbound message, the PUBACKs of outgoing events and the
keep-alive. An exception in a handler is logged (throttled, per filter) and counted; the next
message is delivered as usual. The lock here is never held while paho runs a callback that
could wait for it: paho's ``subscribe`` takes only its mid counter's lock.

Limits: a payload over ``MAX_INBOUND_BYTES`` is dropped with a log line naming the topic, and
the CONNECT asks the broker (v5 Maximum Packet Size) never to send a packet over
``MAX_PACKET_BYTES``, so a client with a stolen password cannot make the gateway read an
arbitrarily large message into memory (the broker drops those itself).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from paho.mqtt.client import Client, MQTTMessage, topic_matches_sub
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.deliver.status import InboundStats, Refusal
from edge_agent.deliver.topics import filter_problem
from edge_agent.events import iso
from edge_agent.logs import Throttle

log = logging.getLogger("edge_agent.deliver.downlink")

BYTES_PER_MIB = 1 << 20
MAX_INBOUND_BYTES = 2 * BYTES_PER_MIB  # the largest payload handed to a handler
# The broker is asked never to send more than this (topic and properties included); between
# the two limits a message is read, then dropped here with a log line naming its topic.
MAX_PACKET_BYTES = 4 * MAX_INBOUND_BYTES
SUBSCRIBE_QOS = 1
NOT_AUTHORIZED = 0x87  # v5 reason code
LOG_EVERY_S = 300.0

Handler = Callable[["Inbound"], None]


@dataclass(frozen=True)
class Inbound:
    """One message the broker delivered on a subscribed filter."""

    topic: str  # absolute, as published
    payload: bytes
    retain: bool  # True when it was stored on the broker (sent because we subscribed)


class Downlink:
    """Subscriptions kept across connections, and the dispatch of inbound messages."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._throttle = Throttle(log, LOG_EVERY_S)
        self._lock = threading.Lock()
        # Guarded by _lock:
        self._handlers: dict[str, Handler] = {}
        self._client: Client | None = None  # the connected client, if any
        self._asked: dict[int, tuple[str, ...]] = {}  # SUBSCRIBE mid -> its filters
        self._granted: set[str] = set()  # filters the broker accepted on this connection
        self._stats = InboundStats(
            inbound_received=0, inbound_dropped=0, inbound_handler_errors=0,
            subscribe_refused=0, last_subscribe_refusal=None,
        )

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Deliver messages matching ``topic_filter`` (absolute) to ``handler`` from now on,
        on this connection and every later one; a second call for the same filter replaces
        its handler. ValueError for a filter MQTT does not accept."""
        problem = filter_problem(topic_filter)
        if problem is not None:
            raise ValueError(f"cannot subscribe to MQTT filter {topic_filter!r}: {problem}")
        with self._lock:
            self._handlers[topic_filter] = handler
            if self._client is not None:
                self._send(self._client, (topic_filter,))

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop delivering ``topic_filter`` (a filter never subscribed is ignored). A message
        the broker sent before it saw the UNSUBSCRIBE is dropped here."""
        with self._lock:
            if self._handlers.pop(topic_filter, None) is None:
                return
            self._granted.discard(topic_filter)
            if self._client is not None:
                self._client.unsubscribe(topic_filter)

    def filters(self) -> list[str]:
        """Every filter subscribed, whether the broker has granted it yet or not."""
        with self._lock:
            return list(self._handlers)

    def active(self) -> list[str]:
        """The filters the broker has granted on the current connection (a SUBACK said so),
        sorted; empty while disconnected."""
        with self._lock:
            return sorted(self._granted)

    def stats(self) -> InboundStats:
        with self._lock:
            return InboundStats(**self._stats)

    # -- the link, on the uplink's worker thread --------------------------------------------

    def attach(self, client: Client) -> None:
        """A connection was accepted: subscribe every filter on it (one SUBSCRIBE)."""
        with self._lock:
            self._client = client
            self._asked.clear()  # mids start over with each client
            self._granted.clear()
            if self._handlers:
                self._send(client, tuple(self._handlers))

    def detach(self, client: Client) -> None:
        """The connection is closing: calls from now on only update the registry."""
        with self._lock:
            if self._client is client:
                self._client = None
                self._asked.clear()
                self._granted.clear()

    def _send(self, client: Client, filters: tuple[str, ...]) -> None:
        """SUBSCRIBE (caller holds _lock). Not connected any more: the next attach does it."""
        options = SubscribeOptions(qos=SUBSCRIBE_QOS)
        rc, mid = client.subscribe([(f, options) for f in filters])
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._asked[mid] = filters

    # -- paho's network thread ----------------------------------------------------------------

    def on_subscribe(
        self, client: Client, userdata: Any, mid: int, reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._lock:
            if client is not self._client:
                return
            filters = self._asked.pop(mid, ())
            answers = list(zip(filters, reasons, strict=False))
            refused = [(f, r) for f, r in answers if r.is_failure]
            # Granted, unless unsubscribed meanwhile.
            self._granted.update(
                f for f, r in answers if not r.is_failure and f in self._handlers
            )
            for topic_filter, reason in refused:
                self._stats["subscribe_refused"] += 1
                self._stats["last_subscribe_refusal"] = Refusal(
                    topic=topic_filter, reason_code=int(reason.value), reason=str(reason),
                    time=iso(time.time()),
                )
        for topic_filter, reason in refused:
            hint = (" (its ACL does not let this client subscribe there)"
                    if reason.value == NOT_AUTHORIZED else "")
            self._throttle.log(
                logging.ERROR, f"suback:{topic_filter}",
                "%s refused the subscription to %r: 0x%02X %s%s; nothing published there "
                "reaches this gateway; asked again on every new connection", self._where,
                topic_filter, int(reason.value), reason, hint,
            )

    def on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # paho raises on a topic that is not UTF-8
            with self._lock:
                self._stats["inbound_dropped"] += 1
            self._throttle.warning("bad-topic", "%s sent a message whose topic is not UTF-8; "
                                   "dropped", self._where)
            return
        with self._lock:
            matched = [(f, h) for f, h in self._handlers.items() if topic_matches_sub(f, topic)]
            if matched and len(msg.payload) > MAX_INBOUND_BYTES:
                self._stats["inbound_dropped"] += 1
        if not matched:
            log.debug("%s: message on %r matches no subscription (unsubscribed?); ignored",
                      self._where, topic)
            return
        if len(msg.payload) > MAX_INBOUND_BYTES:
            self._throttle.warning(
                f"oversized:{matched[0][0]}", "%s sent %d bytes on %r, over the %d-byte limit "
                "of an inbound message; dropped", self._where, len(msg.payload), topic,
                MAX_INBOUND_BYTES,
            )
            return
        inbound = Inbound(topic, bytes(msg.payload), bool(msg.retain))
        with self._lock:
            self._stats["inbound_received"] += 1
        for topic_filter, handler in matched:
            try:
                handler(inbound)
            except Exception:  # a handler's bug must not end paho's thread or the uplink
                with self._lock:
                    self._stats["inbound_handler_errors"] += 1
                self._throttle.log(
                    logging.ERROR, f"handler:{topic_filter}",
                    "the handler of MQTT filter %r failed on a message on %r; the message is "
                    "dropped, later ones are still delivered", topic_filter, topic,
                    exc_info=True,
                )
