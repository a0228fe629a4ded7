"""Helpers for the updater's tests: real bundle variants, a desk that publishes over a real
Mosquitto, and a gateway-side MQTT client for the updater's subscriptions.

Bundle variants are copies of the session's real int8 bundle with the manifest edited and
re-signed by ``export sign`` (``export.sign.sign_manifest``), so each is a bundle a desk could
really make: a newer release, one that alerts on everything, one whose model cannot be
loaded, one for other channels or another feature kernel, one older than the original.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker import LOCALHOST, READY_TIMEOUT_S
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.client import Client, MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.events import Event
from edge_agent.ota.protocol import DEFAULT_CHUNK_BYTES, Deployment, Targets, sign_deployment
from export.keys import load_private_key
from export.publish import Order, chunk_messages, load_release, make_deployment
from export.sign import sign_manifest

PREFIX = "edge"
MACHINE = "press-7"
HOUR_S = 3600.0


def variant(
    src: Path, dst: Path, key: Path, *, edit: Callable[[dict[str, Any]], None] | None = None,
    files: dict[str, bytes] | None = None, new_release: bool = True, version: str | None = None,
) -> Path:
    """A copy of bundle ``src`` at ``dst``, its manifest edited and signed again with ``key``."""
    shutil.copytree(src, dst)
    for name, data in (files or {}).items():
        (dst / name).write_bytes(data)
    if edit is not None:
        doc = json.loads((dst / "manifest.json").read_text())
        edit(doc)
        (dst / "manifest.json").write_text(json.dumps(doc))
    sign_manifest(dst, key, new_release=new_release, model_version=version)
    return dst


def alert_everything(doc: dict[str, Any]) -> None:
    """Every window to stage 2, and every stage-2 window over the alert threshold."""
    doc["forest"]["screen_threshold"] = -1e9
    doc["threshold"]["alert_threshold"] = 1e-12


def created_at(bundle: Path) -> str:
    return str(json.loads((bundle / "manifest.json").read_text())["created_at"])


def deployment(
    bundle: Path, key: Ed25519PrivateKey, *, prefix: str = PREFIX,
    machines: tuple[str, ...] = (MACHINE,), groups: tuple[str, ...] = (),
    expires_in_s: float | None = HOUR_S, allow_downgrade: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES, deployment_id: str | None = None,
) -> tuple[Deployment, dict[str, bytes]]:
    """A deployment of ``bundle`` and its chunk messages by topic, as ``export publish``
    makes them (nothing published)."""
    release = load_release(bundle, key)
    order = Order(
        deployment_id=deployment_id or f"d-{uuid.uuid4().hex[:10]}", issued_at=time.time(),
        expires_in_s=expires_in_s, allow_downgrade=allow_downgrade, chunk_bytes=chunk_bytes,
    )
    dep = make_deployment(release, order, Targets(machines=list(machines), groups=list(groups)))
    return dep, dict(chunk_messages(prefix, release, chunk_bytes))


class Desk:
    """Publishes releases the way ``export publish`` does, over a real broker."""

    def __init__(self, port: int, key: Path, prefix: str = PREFIX) -> None:
        self.key = load_private_key(key)
        self.prefix = prefix
        self.client = Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=f"desk-{uuid.uuid4().hex[:8]}", protocol=MQTTv5)
        self.client.connect(LOCALHOST, port)
        self.client.loop_start()

    def deployment(self, bundle: Path, **kw: Any) -> tuple[Deployment, dict[str, bytes]]:
        return deployment(bundle, self.key, prefix=self.prefix, **kw)

    def put(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(READY_TIMEOUT_S)

    def chunks(self, chunks: dict[str, bytes]) -> None:
        for topic, payload in chunks.items():
            self.put(topic, payload)

    def order(self, topic: str, dep: Deployment) -> None:
        self.put(topic, sign_deployment(dep, self.key))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class GatewayLink:
    """The updater's subscriptions on a real MQTT v5 connection (what the uplink's downlink
    does in the agent), re-subscribed on every reconnect."""

    def __init__(self, port: int) -> None:
        self.client = Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=f"gw-{uuid.uuid4().hex[:8]}", protocol=MQTTv5)
        self.client.reconnect_delay_set(1, 1)
        self.handlers: dict[str, Callable[[Any], None]] = {}
        self.received: list[str] = []
        self._lock = threading.Lock()
        self._up = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(LOCALHOST, port, properties=Properties(PacketTypes.CONNECT))
        self.client.loop_start()
        assert self._up.wait(READY_TIMEOUT_S), "gateway link did not connect"

    def _on_connect(self, client: Client, *_: object) -> None:
        with self._lock:
            filters = list(self.handlers)
        for f in filters:
            client.subscribe(f, qos=1)
        self._up.set()

    def _on_message(self, client: Client, userdata: object, msg: MQTTMessage) -> None:
        from paho.mqtt.client import topic_matches_sub

        from edge_agent.deliver.downlink import Inbound

        with self._lock:
            self.received.append(msg.topic)
            handlers = [h for f, h in self.handlers.items() if topic_matches_sub(f, msg.topic)]
        for h in handlers:
            h(Inbound(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def subscribe(self, topic_filter: str, handler: Callable[[Any], None]) -> None:
        with self._lock:
            self.handlers[topic_filter] = handler
        self.client.subscribe(topic_filter, qos=1)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            if self.handlers.pop(topic_filter, None) is None:
                return
        self.client.unsubscribe(topic_filter)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Sink:
    """Where the reporter's messages go in these tests: kept in order, in memory."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool, str]] = []
        self.events: list[Event] = []
        self._cond = threading.Condition()

    def add(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def add_message(self, topic: str, payload: bytes, *, retain: bool = False,
                    kind: str = "message") -> None:
        with self._cond:
            self.messages.append((topic, payload, retain, kind))
            self._cond.notify_all()

    def states(self) -> list[str]:
        with self._cond:
            return [str(e.state) for e in self.events]

    def last(self) -> Event:
        with self._cond:
            return self.events[-1]

    def wait_state(self, state: str, timeout: float = 60.0) -> Event:
        """The first event in ``state`` (waits for it)."""
        def found() -> Event | None:
            return next((e for e in self.events if e.state == state), None)

        with self._cond:
            ok = self._cond.wait_for(lambda: found() is not None, timeout)
            assert ok, f"no {state!r} report within {timeout} s; got {self.states()}"
            hit = found()
        assert hit is not None
        return hit
