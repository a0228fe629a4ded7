"""The desk's side of an over-the-air update, for the gateway's tests: a deployment and its
chunks made exactly as ``export publish`` makes them (``export.publish``), published over a
real broker piece by piece, so a test can hold chunks back, tamper with one, or send the
deployment before its chunks; and bundle variants, copies of a real bundle edited and signed
again with ``export sign`` (``export.sign.sign_manifest``), as a desk could really make them.

Tests import it as ``from ota_desk import Desk`` (``tests/`` is on sys.path).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker import LOCALHOST, READY_TIMEOUT_S
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.client import Client, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.ota.protocol import DEFAULT_CHUNK_BYTES, Deployment, Targets, sign_deployment
from export.keys import load_private_key
from export.publish import Order, chunk_messages, load_release, make_deployment
from export.sign import sign_manifest

PREFIX = "edge"
MACHINE = "press-7"
HOUR_S = 3600.0


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
