"""A real Mosquitto broker for tests, and a small subscriber that collects what it receives.

Tests import it as ``from broker import Mosquitto, Subscriber`` (``tests/`` is on sys.path)
and get a started broker from the ``mosquitto`` fixture (re-exported by a conftest). Each
broker runs from a generated config in its own directory on a free ephemeral port, with
persistence on, so :meth:`Mosquitto.restart` on the same port keeps retained messages and
the queued messages of persistent subscribers, as a production broker would. An ``acl_file``
(Mosquitto's format: ``topic`` lines before any ``user`` line apply to anonymous clients) is
re-read by :meth:`Mosquitto.reload`, as ``systemctl reload mosquitto`` does. A
``Subscriber(..., v5=True)`` also records each message's MQTT v5 properties.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import Client, ConnectFlags, MQTTMessage, MQTTv5, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

LOCALHOST = "127.0.0.1"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
READY_POLL_S = 0.02
SUBSCRIBER_RETRY_S = 1  # paho's reconnect delay is whole seconds
SUBSCRIBER_SESSION_EXPIRY_S = 3600  # a persistent v5 subscriber's session outlives a restart


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener: the broker's certificate chain and whether clients need one too."""

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = False


class Mosquitto:
    """One ``mosquitto`` process on 127.0.0.1 (plus an optional TLS listener)."""

    def __init__(
        self,
        workdir: Path,
        *,
        password_file: Path | None = None,
        tls: BrokerTls | None = None,
        acl_file: Path | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        """``extra``: more lines for mosquitto.conf's default listener (e.g. limits)."""
        binary = mosquitto_binary()
        if binary is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls is not None else None
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        self._proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} {LOCALHOST}",
            f"allow_anonymous {'false' if password_file else 'true'}",
            "persistence true",
            f"persistence_location {workdir}/",
            # Unlimited queue for offline persistent subscribers: the fault test queues
            # minutes of events for its subscriber while the broker restarts.
            "max_queued_messages 0",
            f"log_dest file {self.log_path}",
            "log_type all",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to a user that cannot write here
        if password_file is not None:
            lines.append(f"password_file {password_file}")
        if acl_file is not None:
            lines.append(f"acl_file {acl_file}")
        lines += extra
        if tls is not None:
            lines += [
                f"listener {self.tls_port} {LOCALHOST}",
                f"cafile {tls.cafile}",
                f"certfile {tls.certfile}",
                f"keyfile {tls.keyfile}",
                f"require_certificate {'true' if tls.require_certificate else 'false'}",
            ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited at start: {err}\n{self.log()}")
            if all(_accepts(p) for p in ports):
                return
            time.sleep(READY_POLL_S)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {ports} within {READY_TIMEOUT_S} s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # SIGTERM: mosquitto saves its persistence file
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        """Re-read the config, ACL and password files (SIGHUP); clients stay connected."""
        assert self._proc is not None
        mark = len(self.log())
        self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "Reloading config" not in self.log()[mark:]:
            assert time.monotonic() < deadline, "mosquitto did not reload its config"
            time.sleep(READY_POLL_S)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Die like a power cut (SIGKILL): nothing is saved since the last clean stop."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOCALHOST, port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A started anonymous broker, stopped after the test whatever happens."""
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    user_properties: tuple[tuple[str, str], ...] = ()  # v5 subscribers only
    content_type: str | None = None
    expiry_s: int | None = None  # v5 Message Expiry Interval left when it arrived

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """Collects the messages on ``topic``; ``persistent`` keeps a session (QoS 1 messages
    are queued by the broker while it is away, even across a broker restart); ``v5`` speaks
    MQTT v5 and records the properties of what it receives."""

    def __init__(
        self, port: int, topic: str, *, persistent: bool = False, client_id: str = "",
        v5: bool = False,
    ) -> None:
        self.topic = topic
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._v5 = v5
        self._persistent = persistent
        self._client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-sub-{uuid.uuid4().hex[:12]}",
            clean_session=None if v5 else not persistent,
            protocol=MQTTv5 if v5 else MQTTv311,
        )
        self._client.reconnect_delay_set(SUBSCRIBER_RETRY_S, SUBSCRIBER_RETRY_S)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._subscribed = threading.Event()
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._port = port

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        props = msg.properties
        got = Received(
            msg.topic, bytes(msg.payload), bool(msg.retain),
            tuple(getattr(props, "UserProperty", ())),
            getattr(props, "ContentType", None), getattr(props, "MessageExpiryInterval", None),
        )
        with self._cond:
            self.messages.append(got)
            self._cond.notify_all()

    def start(self) -> Subscriber:
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            if self._persistent:
                props.SessionExpiryInterval = SUBSCRIBER_SESSION_EXPIRY_S
            self._client.connect(LOCALHOST, self._port, keepalive=10,
                                 clean_start=not self._persistent, properties=props)
        else:
            self._client.connect(LOCALHOST, self._port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(READY_TIMEOUT_S):
            raise RuntimeError(f"subscriber could not subscribe to {self.topic}")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, n: int, timeout: float) -> list[Received]:
        """At least ``n`` messages (a copy of all of them), or an AssertionError."""
        return self.wait_until(lambda msgs: len(msgs) >= n, timeout, f"{n} messages")

    def wait_until(
        self, pred: Callable[[list[Received]], bool], timeout: float, what: str = "condition"
    ) -> list[Received]:
        with self._cond:
            ok = self._cond.wait_for(lambda: pred(self.messages), timeout)
            got = list(self.messages)
        assert ok, f"timed out after {timeout} s waiting for {what} on {self.topic}; got {len(got)}"
        return got
