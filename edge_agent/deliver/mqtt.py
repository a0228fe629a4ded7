"""The MQTT uplink: publishes the outbox in order at QoS 1 and deletes what the broker acks.

Sits after ``edge_agent.deliver.outbox``. One worker thread owns delivery: it connects
(``link.BrokerLink``, capped exponential backoff; a broker that is down at start-up never
blocks the agent), publishes the retained ``online`` birth, then sends pending events in
``seq`` order with at most ``max_inflight`` unacknowledged, and a retained heartbeat with
health counters every ``heartbeat_s``. PUBACK mids that paho's thread records are mapped back
to outbox rows here and deleted. After a loss every in-flight mid is forgotten and sending
restarts from the oldest pending row with a fresh client, so order holds and nothing is
skipped (a re-send may duplicate an event; consumers drop copies by event id).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from paho.mqtt.client import Client
from paho.mqtt.enums import MQTTErrorCode

from edge_agent.deliver.config import MqttConfig
from edge_agent.deliver.link import (
    CONNACK_TIMEOUT_S,
    GOODBYE_ACK_TIMEOUT_S,
    QOS_AT_LEAST_ONCE,
    BrokerLink,
)
from edge_agent.deliver.mqtt_client import CONNECT_TIMEOUT_S, load_security
from edge_agent.deliver.outbox import Outbox
from edge_agent.deliver.status import (
    SHUTDOWN_REASON,
    UplinkStats,
    events_topic,
    heartbeat_payload,
    status_payload,
    status_topic,
    will_payload,
)
from edge_agent.logs import Throttle

log = logging.getLogger("edge_agent.deliver.mqtt")

STOP_GRACE_S = CONNECT_TIMEOUT_S + CONNACK_TIMEOUT_S + GOODBYE_ACK_TIMEOUT_S
LOG_EVERY_S = 300.0
BACKOFF_FACTOR = 2.0
BACKOFF_JITTER = 0.1  # +-10 %: a fleet that lost the same broker does not return in lockstep

Health = Callable[[], dict[str, object]]
OnAck = Callable[[str, float], None]
_InFlight = dict[int, tuple[int, str, float]]  # mid -> (seq, event id, monotonic send time)


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
        self._events_topic = events_topic(cfg, machine_id)
        self._status_topic = status_topic(cfg, machine_id)
        self._where = f"MQTT broker {cfg.host}:{cfg.port}"
        self._throttle = Throttle(log, LOG_EVERY_S)
        self._thread: threading.Thread | None = None
        self._started_at = time.monotonic()
        self._cond = threading.Condition()  # shared with paho's thread through the link
        self._link = BrokerLink(
            cfg, cfg.client_id or f"edge-agent-{machine_id}", self._cond,
            will_topic=self._status_topic, will=will_payload(machine_id),
        )
        # Guarded by _cond:
        self._kick = False
        self._stopping = False
        self._drain_deadline = 0.0
        self._stats = UplinkStats(
            connected=False, published=0, acked=0, connects=0, reconnects=0,
            connect_failures=0, connection_losses=0, heartbeats=0, inflight=0,
            last_ack_latency_s=None,
        )

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._link.up

    def start(self) -> None:
        """Read the password and TLS files (ConfigError if unusable) and start the worker.
        Returns at once: connecting happens in the background."""
        if self._thread is not None:
            raise RuntimeError("MqttUplink already started")
        self._link.security = load_security(self._cfg)
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="edge-mqtt-uplink", daemon=True)
        self._thread.start()

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
        out["reconnects"] = max(0, out["connects"] - 1)
        return out

    # -- worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        delay = self._cfg.backoff_initial_s
        while True:
            with self._cond:
                if self._stopping:
                    return
            client = self._connect()
            if client is not None and self._session(client):
                delay = self._cfg.backoff_initial_s
                continue
            wait = delay * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
            with self._cond:
                self._cond.wait_for(lambda: self._stopping, timeout=wait)
            delay = min(delay * BACKOFF_FACTOR, self._cfg.backoff_max_s)

    def _session(self, client: Client) -> bool:
        """Serve one connection and close it; False if it ended in an unexpected error (the
        caller then backs off, so a persistent fault cannot spin or flood the log)."""
        clean = ok = False
        try:
            clean = self._serve(client)
            ok = True
        except Exception as err:
            self._throttle.log(logging.ERROR, "serve", "MQTT uplink error, reconnecting: %r",
                               err)
        goodbye = status_payload("offline", self._machine_id, reason=SHUTDOWN_REASON)
        self._link.close(client, (self._status_topic, goodbye) if clean else None)
        with self._cond:
            self._stats["inflight"] = 0
        return ok

    def _connect(self) -> Client | None:
        try:
            result = self._link.open()
        except OSError as err:  # refused, unreachable, DNS, TLS handshake
            result = f"cannot connect: {err}"
        except Exception as err:
            log.exception("unexpected error connecting to the %s", self._where)
            result = f"cannot connect: {err}"
        if isinstance(result, str):
            with self._cond:
                self._stats["connect_failures"] += 1
            self._throttle.log(
                logging.ERROR if result.startswith("refused") else logging.WARNING, "connect",
                "%s: %s; events wait in the outbox, retrying with backoff up to %g s",
                self._where, result, self._cfg.backoff_max_s,
            )
            return None
        with self._cond:
            self._stats["connects"] += 1
            first = self._stats["connects"] == 1
        # The "connect" warning is not cleared: a flapping broker still logs at most once
        # per LOG_EVERY_S, and a fresh outage after a quiet spell logs at once anyway.
        args = (self._where, self._outbox.depth())
        if first:
            log.info("connected to the %s; %d event(s) waiting", *args)
        else:
            self._throttle.log(logging.INFO, "reconnected",
                               "reconnected to the %s; %d event(s) waiting", *args)
        result.publish(self._status_topic, status_payload("online", self._machine_id),
                       qos=QOS_AT_LEAST_ONCE, retain=True)
        return result

    def _serve(self, client: Client) -> bool:
        """Publish until the connection is lost (False) or a stop has drained (True)."""
        inflight: _InFlight = {}
        last_seq = 0  # everything up to here was sent on this connection
        next_beat = time.monotonic() + self._cfg.heartbeat_s
        while True:
            with self._cond:
                acks, self._link.acks = self._link.acks, []
                up, stopping, deadline = self._link.up, self._stopping, self._drain_deadline
            self._settle(acks, inflight)
            if not up:
                with self._cond:
                    self._stats["connection_losses"] += 1
                self._throttle.warning("lost", "lost the %s; events wait in the outbox and "
                                       "are re-sent in order on reconnect", self._where)
                return False
            room = self._cfg.max_inflight - len(inflight)
            batch = self._outbox.pending(room, after_seq=last_seq) if room > 0 else []
            sent = 0
            for row in batch:
                info = client.publish(self._events_topic, row.payload, qos=QOS_AT_LEAST_ONCE)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break  # the connection just went; the next turn sees it and starts over
                inflight[info.mid] = (row.seq, row.event_id, time.monotonic())
                last_seq = row.seq
                sent += 1
            now = time.monotonic()
            with self._cond:
                self._stats["published"] += sent
                self._stats["inflight"] = len(inflight)
            if stopping and ((not inflight and not batch) or now >= deadline):
                return True
            if now >= next_beat:
                self._heartbeat(client)
                next_beat = now + self._cfg.heartbeat_s
            timeout = min(next_beat, deadline) - now if stopping else next_beat - now
            with self._cond:
                self._cond.wait_for(
                    lambda: self._kick or bool(self._link.acks) or not self._link.up,
                    timeout=max(timeout, 0.0),
                )
                self._kick = False

    def _settle(self, acks: list[tuple[int, float]], inflight: _InFlight) -> None:
        """Delete the rows the broker acknowledged; mids not in flight are status messages."""
        done: list[int] = []
        latency = None
        for mid, t_ack in acks:
            entry = inflight.pop(mid, None)
            if entry is None:
                continue
            seq, event_id, t_sent = entry
            done.append(seq)
            latency = t_ack - t_sent
            if self._on_ack is not None:
                self._on_ack(event_id, t_ack)
        if done:
            self._outbox.ack_many(done)
            with self._cond:
                self._stats["acked"] += len(done)
                self._stats["last_ack_latency_s"] = latency

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
        client.publish(self._status_topic, payload, qos=QOS_AT_LEAST_ONCE, retain=True)
        with self._cond:
            self._stats["heartbeats"] += 1
