"""The MQTT uplink: publishes the outbox in order at QoS 1 and deletes what the broker accepts;
and the downlink's connection: the gateway's subscriptions ride on the same client.

Sits after ``edge_agent.deliver.outbox``. One supervised worker thread owns delivery: it
connects over MQTT v5 (``link.BrokerLink``, capped exponential backoff; a broker that is down
at start-up never blocks the agent), publishes the retained ``online`` birth, then sends
pending rows in ``seq`` order with at most ``max_inflight`` unacknowledged (fewer if the
broker's Receive Maximum says so): events to ``<prefix>/<machine>/events`` with user
properties (machine, event id, kind, schema) and the optional ``event_expiry_s``, other
messages to their own topic under ``<prefix>/<machine>/`` with their retain flag; and a
retained heartbeat every ``heartbeat_s``. "Event" below means any outbox row.

:meth:`MqttUplink.subscribe` registers a filter with the downlink
(``edge_agent.deliver.downlink``), subscribed again on every connection; its handler runs on
paho's network thread and must not block.

An event is deleted only on a PUBACK whose v5 reason code is a success (below 0x80; Mosquitto's
0x10 "No matching subscribers" is one). A refused publish (0x87 Not authorized when the
broker's ACL denies the topic) keeps the event, is logged naming topic, reason and event, and
counted; nothing more is sent on that connection, so no later event overtakes it, and after a
capped backoff a new connection retries from the oldest pending event: an operator who fixes
the ACL sees delivery resume by itself. A connection whose oldest event waits longer than
``ack_timeout_s`` for its PUBACK is dropped the same way. After any loss every in-flight mid is
forgotten and sending restarts from the oldest pending row with a fresh client, so order holds
and nothing is skipped (a re-send may duplicate an event; consumers drop copies by event id).

Order: rows go out in seq order, several in flight on one topic. A row for another topic
waits until the rows in flight are acknowledged, so that a refusal (which stops everything
after the refused row) cannot let a later row on another topic overtake it: an ACL that
denies ``model`` holds the events behind a report back rather than reorder them. Messages
are rare (update reports), so the round trip this costs at each change of topic is too.
An error outside the expected set (a bug, an outbox fault) ends the connection and restarts
the worker through ``edge_agent.service.supervisor``, counted in :attr:`MqttUplink.health`.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from paho.mqtt.client import Client
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties

from edge_agent.deliver.config import MqttConfig
from edge_agent.deliver.downlink import Downlink, Handler
from edge_agent.deliver.link import (
    DISCONNECT_TIMEOUT_S,
    GOODBYE_ACK_TIMEOUT_S,
    QOS_AT_LEAST_ONCE,
    SESSION_TAKEN_OVER,
    BrokerLink,
    Puback,
)
from edge_agent.deliver.mqtt_client import (
    STATUS_INFLIGHT_SLOTS,
    json_properties,
    load_security,
    plaintext_password,
    row_properties,
)
from edge_agent.deliver.outbox import Outbox, Pending
from edge_agent.deliver.status import (
    SHUTDOWN_REASON,
    Refusal,
    UplinkStats,
    heartbeat_payload,
    status_payload,
    status_topic,
    will_payload,
)
from edge_agent.deliver.topics import EVENTS, machine_topic
from edge_agent.events import iso
from edge_agent.logs import Throttle
from edge_agent.service.supervisor import RestartPolicy, TaskHealth, start_supervised

log = logging.getLogger("edge_agent.deliver.mqtt")

THREAD_NAME = "edge-mqtt-uplink"
# After the drain, the time a stop gives the worker to say `offline` and disconnect. A worker
# still connecting then (broker unreachable) is not waited for: the process exits and the
# broker publishes the last will, so a stop always fits systemd's TimeoutStopSec.
STOP_GRACE_S = GOODBYE_ACK_TIMEOUT_S + DISCONNECT_TIMEOUT_S
LOG_EVERY_S = 300.0
BACKOFF_FACTOR = 2.0
BACKOFF_JITTER = 0.1  # +-10 %: a fleet that lost the same broker does not return in lockstep
# A connection that lasted this long ends a run of failures: the backoff starts over, and a
# loss after it is retried at once. A shorter one (a broker that drops us right after
# CONNACK, or two gateways sharing a client id) backs off, so it cannot become a hot loop.
STABLE_SESSION_S = 30.0
NOT_AUTHORIZED = 0x87
# X509 verify codes of a certificate that is valid but issued for another name
HOST_MISMATCH_CODES = frozenset({62, 64})  # X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH

Health = Callable[[], Mapping[str, object]]
OnAck = Callable[[str, float], None]


class Outcome(Enum):
    """How one connection ended."""

    STOPPED = "stopped"  # a stop drained what it could
    LOST = "lost"  # the broker or the network went away
    TAKEN_OVER = "taken over"  # the broker said another client uses our client id
    REFUSED = "refused"  # the broker refused an event
    ACK_TIMEOUT = "ack timeout"  # a PUBACK did not come within ack_timeout_s


@dataclass(frozen=True)
class _Sent:
    seq: int
    event_id: str
    topic: str  # absolute
    at: float  # monotonic time of the publish


_InFlight = dict[int, _Sent]  # mid -> event, in send order


class MqttUplink:
    """Delivers the outbox to one broker; call :meth:`wake` after every ``outbox.add``."""

    def __init__(
        self, cfg: MqttConfig, machine_id: str, outbox: Outbox, health: Health, *,
        on_ack: OnAck | None = None,
    ) -> None:
        self._cfg = cfg
        self._machine_id = machine_id
        self._outbox = outbox
        self._health = health
        self._on_ack = on_ack
        self._status_topic = status_topic(cfg, machine_id)
        self._where = f"MQTT broker {cfg.host}:{cfg.port}"
        self._downlink = Downlink(self._where)
        self._throttle = Throttle(log, LOG_EVERY_S)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._beat_at_once = False  # worker only: the last connection ended in a refusal
        self._started_at = time.monotonic()
        self.health = TaskHealth(
            "mqtt uplink", RestartPolicy(initial_s=cfg.backoff_initial_s, max_s=cfg.backoff_max_s)
        )
        self._cond = threading.Condition()  # shared with paho's thread through the link
        self._link = BrokerLink(
            cfg, cfg.client_id or f"edge-agent-{machine_id}", self._cond,
            will_topic=self._status_topic, will=will_payload(machine_id),
            downlink=self._downlink,
        )
        # Guarded by _cond:
        self._kick = False
        self._stopping = False
        self._drain_deadline = 0.0
        self._stats = UplinkStats(
            connected=False, published=0, acked=0, publish_refused=0, last_refusal=None,
            ack_timeouts=0, session_takeovers=0, connects=0, reconnects=0,
            connect_failures=0, connection_losses=0, heartbeats=0, inflight=0,
            last_ack_latency_s=None, worker_crashes=0, **self._downlink.stats(),
        )

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._link.up

    @property
    def topic_prefix(self) -> str:
        """The first level of every topic of this gateway (``mqtt.topic_prefix``)."""
        return self._cfg.topic_prefix

    @property
    def machine_id(self) -> str:
        return self._machine_id

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Hand every message matching ``topic_filter`` (an absolute filter: build it with
        :attr:`topic_prefix`) to ``handler``, at QoS 1, on every connection from now on;
        retained messages arrive again after each reconnect. From any thread, before or
        after :meth:`start`. ``handler`` runs on paho's network thread and must not block;
        an exception in it is logged and counted. ValueError for an invalid filter."""
        self._downlink.subscribe(topic_filter, handler)

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop handing ``topic_filter`` over (unknown filters are ignored)."""
        self._downlink.unsubscribe(topic_filter)

    def active_subscriptions(self) -> list[str]:
        """The filters the broker has granted on the current connection, sorted."""
        return self._downlink.active()

    def start(self) -> None:
        """Read the password and TLS files (ConfigError if unusable) and start the worker.
        Returns at once: connecting happens in the background."""
        if self._thread is not None:
            raise RuntimeError("MqttUplink already started")
        self._link.security = load_security(self._cfg)
        if plaintext_password(self._cfg):
            log.warning(
                "%s: the password of MQTT user %r crosses the network unencrypted (no "
                "[mqtt.tls]), readable by anyone on the path; configure [mqtt.tls] (port 8883)",
                self._where, self._cfg.username,
            )
        self._started_at = time.monotonic()
        self._thread = start_supervised(THREAD_NAME, self._run, self._stop, self.health)

    def wake(self) -> None:
        """A new event is in the outbox: publish it now rather than at the next timeout."""
        with self._cond:
            self._kick = True
            self._cond.notify_all()

    def stop(self, drain_timeout_s: float) -> None:
        """Publish what can be published within ``drain_timeout_s``, then retained `offline`
        and a clean disconnect. What is left stays in the outbox for the next start."""
        with self._cond:
            self._stopping = self._kick = True
            self._drain_deadline = time.monotonic() + drain_timeout_s
            self._cond.notify_all()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(drain_timeout_s + STOP_GRACE_S)
            if self._thread.is_alive():
                log.warning("MQTT uplink did not stop within %.0f s", drain_timeout_s)
            self._thread = None

    def stats(self) -> UplinkStats:
        """A copy of the counters (never credentials)."""
        with self._cond:
            out = self._stats.copy()
            out["connected"] = self._link.up
        out = UplinkStats(**{**out, **self._downlink.stats()})
        out["reconnects"] = max(0, out["connects"] - 1)
        out["worker_crashes"] = self.health.status()["crashes"]
        return out

    # -- worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        """Connect, serve, back off; until a stop. Runs again after a crash (supervisor)."""
        delay = self._cfg.backoff_initial_s
        while True:
            with self._cond:
                if self._stopping:
                    return
            client = self._connect()
            if client is not None:
                began = time.monotonic()
                outcome = self._session(client)
                # The next connection sends a heartbeat right after its birth, so the
                # retained status shows the refusal while the backoff lasts.
                self._beat_at_once = outcome is Outcome.REFUSED
                if time.monotonic() - began >= STABLE_SESSION_S:
                    delay = self._cfg.backoff_initial_s
                    if outcome is Outcome.LOST:
                        continue  # it had worked for a while: try again at once
            wait = delay * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
            with self._cond:
                self._cond.wait_for(lambda: self._stopping, timeout=wait)
            delay = min(delay * BACKOFF_FACTOR, self._cfg.backoff_max_s)

    def _session(self, client: Client) -> Outcome:
        """Serve one connection and close it, whatever happens (an unexpected error goes on
        to the supervisor once the connection is closed)."""
        outcome: Outcome | None = None
        try:
            self._greet(client)
            outcome = self._serve(client)
        finally:
            goodbye = None
            if outcome is Outcome.STOPPED:
                offline = status_payload("offline", self._machine_id, reason=SHUTDOWN_REASON)
                goodbye = (self._status_topic, offline, json_properties())
            self._link.close(client, goodbye)
            with self._cond:
                self._stats["inflight"] = 0
        return outcome

    def _connect(self) -> Client | None:
        try:
            result = self._link.open()
        except ssl.SSLCertVerificationError as err:
            result = self._certificate_problem(err)
        except OSError as err:  # refused, unreachable, DNS, TLS handshake
            result = f"cannot connect: {err}"
        if isinstance(result, str):
            with self._cond:
                self._stats["connect_failures"] += 1
            self._throttle.log(
                logging.WARNING if result.startswith("cannot connect") else logging.ERROR,
                "connect", "%s: %s; events wait in the outbox, retrying with backoff up to %g s",
                self._where, result, self._cfg.backoff_max_s,
            )
            return None
        with self._cond:
            self._stats["connects"] += 1
        return result

    def _certificate_problem(self, err: ssl.SSLCertVerificationError) -> str:
        if err.verify_code in HOST_MISMATCH_CODES:
            return (
                f"the broker's certificate is not valid for host {self._cfg.host!r} "
                f"({err.verify_message}); set mqtt.host to a name the certificate lists, or "
                "reissue the certificate"
            )
        return f"cannot verify the broker's certificate: {err.verify_message}"

    def _greet(self, client: Client) -> None:
        """Log the connection and publish the retained ``online`` birth."""
        with self._cond:
            first = self._stats["connects"] == 1
        # The "connect" warning is not cleared: a flapping broker still logs at most once
        # per LOG_EVERY_S, and a fresh outage after a quiet spell logs at once anyway.
        args = (self._where, self._outbox.depth())
        if first:
            log.info("connected to the %s (MQTT v5); %d event(s) waiting", *args)
        else:
            self._throttle.log(logging.INFO, "reconnected",
                               "reconnected to the %s; %d event(s) waiting", *args)
        client.publish(self._status_topic, status_payload("online", self._machine_id),
                       qos=QOS_AT_LEAST_ONCE, retain=True, properties=json_properties())
        if self._beat_at_once:
            self._heartbeat(client)  # before any event: a broker may hang up on a refusal

    def _serve(self, client: Client) -> Outcome:
        """Publish until the connection ends; says how it ended."""
        began = time.monotonic()
        inflight: _InFlight = {}
        last_seq = 0  # everything up to here was sent on this connection
        refused = False  # once set, nothing more is sent on this connection
        window = self._window()
        next_beat = began + self._cfg.heartbeat_s
        while True:
            with self._cond:
                acks, self._link.acks = self._link.acks, []
                up, stopping, deadline = self._link.up, self._stopping, self._drain_deadline
            refused = self._settle(acks, inflight) or refused
            if not up:
                return self._lost(time.monotonic() - began, refused=refused)
            oldest = next(iter(inflight.values())).at if inflight else None
            if oldest is not None and time.monotonic() - oldest >= self._cfg.ack_timeout_s:
                return self._ack_timeout(len(inflight))
            room = 0 if refused else window - len(inflight)
            batch = self._outbox.pending(room, after_seq=last_seq) if room > 0 else []
            for row in batch:
                topic = machine_topic(self._cfg.topic_prefix, self._machine_id, row.topic)
                if inflight and next(iter(inflight.values())).topic != topic:
                    break  # another topic waits for these acks: see "Order" above
                info = client.publish(topic, row.payload, qos=QOS_AT_LEAST_ONCE,
                                      retain=row.retain, properties=self._row_properties(row))
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break  # the connection just went; the next turn sees it and starts over
                inflight[info.mid] = _Sent(row.seq, row.event_id, topic, time.monotonic())
                last_seq = row.seq
                with self._cond:
                    self._stats["published"] += 1
            with self._cond:
                self._stats["inflight"] = len(inflight)
            now = time.monotonic()
            if stopping and ((not inflight and not batch) or now >= deadline):
                return Outcome.STOPPED
            if refused and not inflight:
                return Outcome.REFUSED
            if now >= next_beat:
                self._heartbeat(client)
                next_beat = now + self._cfg.heartbeat_s
            wake_at = min(next_beat, deadline) if stopping else next_beat
            if inflight:
                wake_at = min(wake_at, next(iter(inflight.values())).at + self._cfg.ack_timeout_s)
            with self._cond:
                self._cond.wait_for(
                    lambda: self._kick or bool(self._link.acks) or not self._link.up,
                    timeout=max(wake_at - now, 0.0),
                )
                self._kick = False

    def _window(self) -> int:
        """Events in flight at most: ``max_inflight``, within the broker's Receive Maximum
        less room for status messages (a v5 broker disconnects a client that exceeds it, and
        paho, whose own limit is fixed before the CONNACK, does not look at it)."""
        with self._cond:
            most = self._link.receive_maximum
        window = max(1, min(self._cfg.max_inflight, most - STATUS_INFLIGHT_SLOTS))
        if window < self._cfg.max_inflight:
            log.debug("%s: Receive Maximum %d; at most %d event(s) in flight",
                      self._where, most, window)
        return window

    def _row_properties(self, row: Pending) -> Properties:
        # Expiry is for events only: a retained report must not vanish from the broker.
        expiry = self._cfg.event_expiry_s if row.topic == EVENTS else None
        return row_properties(row.payload, machine_id=self._machine_id, row_id=row.event_id,
                              expiry_s=expiry)

    def _settle(self, acks: list[Puback], inflight: _InFlight) -> bool:
        """Delete the rows the broker accepted; True if it refused an event. Mids not in
        flight are status messages."""
        done: list[int] = []
        latency = None
        refused = False
        for ack in acks:
            sent = inflight.pop(ack.mid, None)
            if ack.reason.failure:
                self._refusal(ack, sent)
                refused = refused or sent is not None
                continue
            if sent is None:
                continue
            done.append(sent.seq)
            latency = ack.at - sent.at
            if self._on_ack is not None:
                self._on_ack(sent.event_id, ack.at)
        if done:
            self._outbox.ack_many(done)
            with self._cond:
                self._stats["acked"] += len(done)
                self._stats["last_ack_latency_s"] = latency
                refusal = self._stats["last_refusal"]
            self._throttle.clear("refused", "the %s accepts events on %r again", self._where,
                                 refusal["topic"] if refusal else "")
        return refused

    def _refusal(self, ack: Puback, sent: _Sent | None) -> None:
        topic = sent.topic if sent is not None else self._status_topic
        with self._cond:
            self._stats["publish_refused"] += 1
            self._stats["last_refusal"] = Refusal(
                topic=topic, reason_code=ack.reason.code, reason=ack.reason.name,
                time=iso(time.time()),
            )
        hint = (" (its ACL does not let this client publish there)"
                if ack.reason.code == NOT_AUTHORIZED else "")
        if sent is None:
            self._throttle.log(logging.ERROR, "refused-status",
                               "%s refused the status message on topic %r: %s%s",
                               self._where, topic, ack.reason, hint)
            return
        self._throttle.log(
            logging.ERROR, "refused",
            "%s refused event %s on topic %r: %s%s; the event stays in the outbox, nothing "
            "after it is sent, and it is retried with backoff up to %g s",
            self._where, sent.event_id, topic, ack.reason, hint, self._cfg.backoff_max_s,
        )

    def _lost(self, lasted_s: float, *, refused: bool) -> Outcome:
        with self._cond:
            self._stats["connection_losses"] += 1
            said = self._link.disconnect
            taken_over = said is not None and said.code == SESSION_TAKEN_OVER
            if taken_over:
                self._stats["session_takeovers"] += 1
        if refused:
            # Some brokers hang up after refusing (Mosquitto 2.0.11 does with an unlimited
            # max_queued_messages); the refusal, already logged, is the news.
            return Outcome.REFUSED
        if taken_over:
            self._throttle.log(
                logging.ERROR, "takeover",
                "%s closed this connection because another client connected with the same "
                "client id %r (%s): two gateways (or agents) are using one id; give each its "
                "own mqtt.client_id. Reconnecting with backoff up to %g s",
                self._where, self._link.client_id, said, self._cfg.backoff_max_s,
            )
            return Outcome.TAKEN_OVER
        why = f" (the broker said {said})" if said is not None else ""
        hint = ""
        if said is None and lasted_s < STABLE_SESSION_S:
            hint = (f"; if connections keep dropping this soon, another client may be using "
                    f"client id {self._link.client_id!r}")
        self._throttle.warning(
            "lost", "lost the %s%s after %.1f s; events wait in the outbox and are re-sent "
            "in order on reconnect%s", self._where, why, lasted_s, hint,
        )
        return Outcome.LOST

    def _ack_timeout(self, waiting: int) -> Outcome:
        with self._cond:
            self._stats["ack_timeouts"] += 1
        self._throttle.warning(
            "ack-timeout", "%s sent no PUBACK within %g s (mqtt.ack_timeout_s) for %d event(s) "
            "in flight; dropping the connection and re-sending them in order on a new one",
            self._where, self._cfg.ack_timeout_s, waiting,
        )
        return Outcome.ACK_TIMEOUT

    def _heartbeat(self, client: Client) -> None:
        try:
            health = self._health()
        except Exception as err:  # a broken health probe must not stop the heartbeat
            self._throttle.warning("health", "health counters unavailable: %s", err)
            health = {}
        payload = heartbeat_payload(
            self._machine_id, uptime_s=time.monotonic() - self._started_at,
            outbox_depth=self._outbox.depth(), outbox_dropped=self._outbox.dropped(),
            stats=self.stats(), health=health,
        )
        client.publish(self._status_topic, payload, qos=QOS_AT_LEAST_ONCE, retain=True,
                       properties=json_properties())
        with self._cond:
            self._stats["heartbeats"] += 1
