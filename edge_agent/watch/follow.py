"""Following the agent's events as the view shows them: over MQTT, or from the local store.

With ``[mqtt]`` in the config, :class:`MqttFeed` subscribes to ``<prefix>/<machine>/events``
and ``<prefix>/<machine>/status`` as any upstream consumer would (MQTT v5, the config's TLS
and credentials, a client id of its own, no last will: it is a reader, not the gateway), so
the view shows exactly what leaves the gateway, plus the retained status. Without it, events
stay on the gateway and :class:`LocalFeed` reads the newest ones from the agent's outbox,
read-only (never a second writer beside the daemon).

Both run beside the view's refresh loop: :meth:`poll` hands over what arrived since the last
call. Only events made since the view started are shown; the end summary reads the whole
store on its own.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.deliver.config import MqttConfig
from edge_agent.deliver.mqtt_client import CONNECT_TIMEOUT_S, load_security
from edge_agent.deliver.outbox import read_recent
from edge_agent.deliver.status import events_topic, status_topic
from edge_agent.deliver.topics import EVENTS
from edge_agent.errors import EdgeAnomalyError

log = logging.getLogger("edge_agent.watch.follow")

QOS_AT_LEAST_ONCE = 1
RECONNECT_MIN_S = 1  # paho's reconnect delays are whole seconds
RECONNECT_MAX_S = 5  # a watcher should notice a returning broker quickly
MAX_BUFFERED = 1000  # events kept between two polls; older ones are dropped (and counted)
LOCAL_READ_LIMIT = 200  # newest stored events read per poll: far more than a second brings


@dataclass(frozen=True)
class SeenEvent:
    """One event as the view received it."""

    topic: str  # the MQTT topic, or the local store's path
    received: float  # epoch s when the view got it
    data: dict[str, Any]  # the event's JSON

    @property
    def id(self) -> str:
        return str(self.data.get("id", ""))

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", "?"))

    @property
    def state(self) -> str:
        return str(self.data.get("state", "?"))

    @property
    def episode(self) -> str:
        return str(self.data.get("episode", ""))


@dataclass(frozen=True)
class SeenStatus:
    """The latest retained status message (birth, heartbeat, ``offline``)."""

    received: float  # epoch s
    data: dict[str, Any]


class EventFeed(Protocol):
    where: str  # what the view names as the events' source

    @property
    def status(self) -> SeenStatus | None: ...

    @property
    def connected(self) -> bool | None: ...  # the view's own link; None: no broker

    @property
    def problem(self) -> str | None: ...

    def start(self) -> None: ...

    def poll(self) -> list[SeenEvent]: ...

    def stop(self) -> None: ...


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return body if isinstance(body, dict) else None


class MqttFeed:
    """An upstream consumer's view of one gateway: its events and its retained status.

    Raises ConfigError at construction for TLS or password files that cannot be used (the
    same checks the uplink makes)."""

    def __init__(self, cfg: MqttConfig, machine_id: str) -> None:
        self.events_topic = events_topic(cfg, machine_id)
        self.status_topic = status_topic(cfg, machine_id)
        self.where = self.events_topic
        self._cfg = cfg
        self._lock = threading.Lock()
        self._events: deque[SeenEvent] = deque()
        self._status: SeenStatus | None = None
        self._connected = False
        self._problem: str | None = None
        self._stopping = False
        self.dropped = 0
        self.malformed = 0
        security = load_security(cfg)
        self._client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"edge-watch-{machine_id}-{uuid.uuid4().hex[:8]}",
            protocol=MQTTv5,
        )
        self._client.connect_timeout = CONNECT_TIMEOUT_S
        self._client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        if security.username is not None:
            self._client.username_pw_set(security.username, security.password)
        if security.ssl_context is not None:
            self._client.tls_set_context(security.ssl_context)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    @property
    def status(self) -> SeenStatus | None:
        with self._lock:
            return self._status

    @property
    def connected(self) -> bool | None:
        with self._lock:
            return self._connected

    @property
    def problem(self) -> str | None:
        with self._lock:
            return self._problem

    def _set(self, *, connected: bool | None = None, problem: str | None) -> None:
        with self._lock:
            if connected is not None:
                self._connected = connected
            self._problem = problem

    def start(self) -> None:
        """Connect in paho's thread, retrying until :meth:`stop`: a broker that is not up yet
        is shown, not fatal."""
        self._set(problem=f"connecting to {self._cfg.host}:{self._cfg.port}")
        self._client.connect_async(
            self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s, clean_start=True
        )
        self._client.loop_start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()

    def poll(self) -> list[SeenEvent]:
        with self._lock:
            out = list(self._events)
            self._events.clear()
        return out

    # -- paho's thread -------------------------------------------------------------------------
    def _on_connect(
        self, client: Client, _userdata: Any, _flags: ConnectFlags, reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._set(connected=False, problem=f"the broker refused the connection: {reason}")
            log.warning("watch: %s:%d refused the connection: %s",
                        self._cfg.host, self._cfg.port, reason)
            return
        self._set(connected=True, problem=None)
        client.subscribe(
            [(self.events_topic, QOS_AT_LEAST_ONCE), (self.status_topic, QOS_AT_LEAST_ONCE)]
        )

    def _on_connect_fail(self, _client: Client, _userdata: Any) -> None:
        self._set(
            connected=False,
            problem=f"cannot connect to {self._cfg.host}:{self._cfg.port} (retrying)",
        )

    def _on_disconnect(
        self, _client: Client, _userdata: Any, _flags: DisconnectFlags, reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        with self._lock:
            self._connected = False
            if not self._stopping:  # our own goodbye is no problem to show
                self._problem = f"disconnected: {reason} (retrying)"

    def _on_subscribe(
        self, _client: Client, _userdata: Any, _mid: int, reasons: list[ReasonCode],
        _props: Properties | None,
    ) -> None:
        topics = (self.events_topic, self.status_topic)
        refused = [f"{t} ({r})" for t, r in zip(topics, reasons, strict=False) if r.is_failure]
        if refused:
            self._set(problem=f"the broker refused the subscription to {', '.join(refused)}")
            log.warning("watch: the broker refused the subscription to %s", ", ".join(refused))

    def _on_message(self, _client: Client, _userdata: Any, msg: MQTTMessage) -> None:
        body = _json_object(bytes(msg.payload))
        now = time.time()
        with self._lock:
            if body is None:
                self.malformed += 1
                self._problem = f"{self.malformed} message(s) on {msg.topic} were not JSON"
                return
            if msg.topic == self.status_topic:
                self._status = SeenStatus(now, body)
                return
            if len(self._events) >= MAX_BUFFERED:
                self._events.popleft()
                self.dropped += 1
            self._events.append(SeenEvent(msg.topic, now, body))


class LocalFeed:
    """Events the agent keeps on the gateway (no broker configured), read-only."""

    def __init__(self, path: Path, since: float) -> None:
        self.path = path
        self.where = str(path)
        self._since = since  # epoch s: only events made from here on are new
        self._seen: set[str] = set()
        self._problem: str | None = None

    @property
    def status(self) -> SeenStatus | None:
        return None

    @property
    def connected(self) -> bool | None:
        return None

    @property
    def problem(self) -> str | None:
        return self._problem

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def poll(self) -> list[SeenEvent]:
        try:
            rows = read_recent(self.path, LOCAL_READ_LIMIT, topic=EVENTS)  # as MQTT
        except EdgeAnomalyError as err:  # no store yet, or one being moved aside
            self._problem = str(err)
            return []
        self._problem = None
        now = time.time()
        out = []
        for r in reversed(rows):  # oldest first
            if r.created < self._since or r.event_id in self._seen:
                continue
            self._seen.add(r.event_id)
            body = _json_object(r.payload)
            if body is not None:
                out.append(SeenEvent(self.where, now, body))
        return out
