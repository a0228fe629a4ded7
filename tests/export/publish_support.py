"""A stand-in gateway for the desk's ``export publish`` / ``export fleet`` tests.

It speaks the real wire contract (``edge_agent.ota.protocol``) over a real Mosquitto: it
retains a report on ``<prefix>/<machine>/model``, takes the signed deployments for its machine
and groups, checks their signature with the fleet's public key, downloads and checks every
chunk, and then reports the states its ``script`` lists. The real updater lives on the
gateway (``edge_agent.ota``); this one only plays its part of the conversation.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from broker import LOCALHOST, READY_TIMEOUT_S, Subscriber
from paho.mqtt.client import Client, MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.bundle.verify import load_public_key
from edge_agent.events import iso
from edge_agent.ota.protocol import (
    Deployment,
    Progress,
    Report,
    blob_filter,
    chunk_topic,
    group_deployment_topic,
    machine_deployment_topic,
    open_deployment,
    parse_chunk_topic,
    report_topic,
    sha256_hex,
)
from export.cli import main

PREFIX = "edge"
OLD_VERSION = "v0-old"
HAPPY = ("downloading", "verifying", "canary", "probation", "active")
HOLD = "hold"  # in a script: wait for release() before going on
WAIT_S = 20.0  # the longest wait for a message that must come
TEST_TIMEOUT_S = "60"  # --timeout of the publishes that wait


def publish(port: int, bundle: Path, keys: Path, *extra: str) -> int:
    return main([
        "publish", "--bundle", str(bundle), "--key", str(keys / "signing.key"),
        "--broker", f"127.0.0.1:{port}", "--timeout", TEST_TIMEOUT_S, *extra,
    ])


class FakeGateway:
    """One machine's update reports, driven by ``script`` for each deployment it takes."""

    def __init__(
        self, port: int, machine: str, pub_key: Path, *, groups: Sequence[str] = (),
        script: Sequence[str] = HAPPY, reason: str = "canary: alert rate 40x the active model",
        log: list[str] | None = None,
    ) -> None:
        self.machine, self.groups, self.script, self.reason = machine, list(groups), script, reason
        self.trusted = [load_public_key(pub_key)]
        self.deployments: list[Deployment] = []
        self.files: dict[str, bytes] = {}  # file name -> the bytes put together from chunks
        self.errors: list[str] = []
        self.log = log if log is not None else []  # shared across gateways: the order of events
        self.active: str | None = OLD_VERSION
        self._chunks: dict[tuple[str, int], bytes] = {}
        self._cond = threading.Condition()
        self._release = threading.Event()
        self._worker: threading.Thread | None = None
        self._client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"fake-gw-{machine}-{uuid.uuid4().hex[:6]}", protocol=MQTTv5,
        )
        self._client.on_message = self._on_message
        self._port = port

    # -- life ------------------------------------------------------------------------------
    def start(self) -> FakeGateway:
        self._client.connect(LOCALHOST, self._port, keepalive=10)
        self._client.loop_start()
        self.report("active")
        topics = [machine_deployment_topic(PREFIX, self.machine)]
        topics += [group_deployment_topic(PREFIX, g) for g in self.groups]
        rc, _ = self._client.subscribe([(t, 1) for t in topics])
        assert rc == 0
        return self

    def stop(self) -> None:
        self._release.set()
        if self._worker is not None:
            self._worker.join(READY_TIMEOUT_S)
        self._client.disconnect()
        self._client.loop_stop()

    def release(self) -> None:
        self._release.set()

    def wait_deployments(self, n: int, timeout: float = READY_TIMEOUT_S) -> list[Deployment]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.deployments) >= n, timeout), (
                f"{self.machine}: no deployment {n} within {timeout} s; errors {self.errors}"
            )
            return list(self.deployments)

    # -- reports ---------------------------------------------------------------------------
    def report(
        self, state: str, deployment: Deployment | None = None, *,
        progress: Progress | None = None, reason: str | None = None,
    ) -> None:
        body = Report(
            machine_id=self.machine, groups=self.groups, active=self.active, state=state,  # type: ignore[arg-type]
            reason=reason, deployment_id=deployment.deployment_id if deployment else None,
            candidate=deployment.model_version if deployment else None, progress=progress,
            updated_at=iso(time.time()) or "", agent_version="test",
        )
        self.log.append(f"{self.machine} {state}")
        info = self._client.publish(report_topic(PREFIX, self.machine), body.to_json(), 1, True)
        info.wait_for_publish(READY_TIMEOUT_S)

    # -- paho's thread ---------------------------------------------------------------------
    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        found = parse_chunk_topic(PREFIX, msg.topic)
        if found is not None:
            with self._cond:
                self._chunks[found] = bytes(msg.payload)
                self._cond.notify_all()
            return
        try:
            deployment = open_deployment(bytes(msg.payload), self.trusted)
        except Exception as exc:
            self.errors.append(f"{msg.topic}: {exc}")
            return
        self.log.append(f"{self.machine} got {deployment.deployment_id}")
        with self._cond:
            self.deployments.append(deployment)
            self._cond.notify_all()
        self._worker = threading.Thread(target=self._update, args=(deployment,), daemon=True)
        self._worker.start()

    def _update(self, d: Deployment) -> None:
        for state in self.script:
            if state == HOLD:
                self._release.wait()
            elif state == "downloading":
                self._download(d)
            elif state == "active":
                self.active = d.model_version
                self.report("active", d)
            elif state in ("rejected", "rolled_back"):
                self.report(state, d, reason=self.reason)
            else:
                self.report(state, d)

    def _download(self, d: Deployment) -> None:
        for entry in d.files.values():
            self._client.subscribe(blob_filter(PREFIX, entry.sha256), 1)
        done = 0
        for name, entry in d.files.items():
            keys = [(entry.sha256, i) for i in range(len(entry.chunks))]
            with self._cond:
                ok = self._cond.wait_for(
                    lambda keys=keys: all(k in self._chunks for k in keys), READY_TIMEOUT_S
                )
            if not ok:
                self.errors.append(f"{name}: chunks missing")
                return
            parts = [self._chunks[k] for k in keys]
            if [sha256_hex(p) for p in parts] != entry.chunks:
                self.errors.append(f"{name}: a chunk does not match its hash")
            self.files[name] = b"".join(parts)
            done += entry.size
            self.report("downloading", d, progress=Progress(bytes=done, total=d.total_bytes))


def retained(port: int, topic: str, n: int) -> dict[str, bytes]:
    """What a subscriber that connects now gets retained (at least ``n`` messages)."""
    with Subscriber(port, topic, v5=True) as sub:
        got = sub.wait_for(n, WAIT_S)
    assert all(m.retain for m in got)
    return {m.topic: m.payload for m in got}


def deployment_chunks(port: int, machine: str, pub_key: Path) -> set[str]:
    """The chunk topics of the deployment retained for ``machine``."""
    topic = machine_deployment_topic(PREFIX, machine)
    d = open_deployment(retained(port, topic, 1)[topic], [load_public_key(pub_key)])
    return {
        chunk_topic(PREFIX, f.sha256, i) for f in d.files.values() for i in range(len(f.chunks))
    }
