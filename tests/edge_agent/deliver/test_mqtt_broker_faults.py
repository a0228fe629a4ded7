"""Broker faults Mosquitto 2.0.11 cannot be made to show, from a scripted broker on a real socket.

A broker that accepts the connection but never acknowledges a publish (while still answering
pings), one that never answers CONNECT, one that closes the session with the v5 DISCONNECT
reason 0x8E "Session taken over" (Mosquitto sends it only from 2.0.15; 2.0.11 just closes the
socket, which ``test_mqtt_refusals`` covers with two real uplinks), and one whose CONNACK sets
a small Receive Maximum (Mosquitto 2.0.11 announces it but does not enforce it; a strict broker
disconnects a client that exceeds it). The scripted broker speaks
just enough MQTT v5 for the uplink's paho client: CONNECT/CONNACK, PUBLISH/PUBACK, PINGREQ and
DISCONNECT, and records every PUBLISH per connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from deliver_support import LOCALHOST, UplinkFactory, make_event, mqtt_config, wait_until

from edge_agent.deliver import link
from edge_agent.deliver.outbox import Outbox

DELIVERY_WAIT_S = 15.0
ACK_TIMEOUT_S = 0.5
CONNACK_TIMEOUT_S = 0.5
TAKEOVERS = 4  # connections the scripted broker kicks before it lets one stay
BACKOFF_JITTER_MIN = 0.9  # the uplink waits at least 90 % of its nominal backoff
SOCKET_POLL_S = 0.1
JOIN_S = 5.0

CONNECT, PUBLISH, PUBACK, PINGREQ, DISCONNECT = 0x1, 0x3, 0x4, 0xC, 0xE
CONNACK_OK = bytes([0x20, 3, 0, 0, 0])  # v5: no session present, success, no properties
RECEIVE_MAXIMUM_PROPERTY = 0x21
PINGRESP = bytes([0xD0, 0])
SESSION_TAKEN_OVER = 0x8E


@dataclass(frozen=True)
class Behaviour:
    """What the broker does on one connection."""

    connack: bool = True
    puback: bool = True
    kick_with: int | None = None  # send DISCONNECT with this reason right after CONNACK
    receive_maximum: int | None = None  # announced in the CONNACK
    ack_when_idle: bool = False  # hold PUBACKs until the client pauses (a slow broker)


@dataclass
class Connection:
    opened: float  # monotonic
    published: list[tuple[str, bytes]] = field(default_factory=list)  # (topic, payload)
    most_unacked: int = 0  # QoS 1 publishes received and not yet acknowledged, at most

    def event_ids(self) -> list[str]:
        return [json.loads(p)["id"] for t, p in self.published if t.endswith("/events")]


class _Closed(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise _Closed
        buf += chunk
    return buf


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    """An MQTT variable byte integer at ``buf[i:]``: (value, index after it)."""
    value, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _read_packet(sock: socket.socket) -> tuple[int, bytes]:
    head = _recv_exact(sock, 1)[0]
    length_bytes = b""
    while not length_bytes or length_bytes[-1] & 0x80:
        length_bytes += _recv_exact(sock, 1)
    length, _ = _varint(length_bytes, 0)
    return head, _recv_exact(sock, length)


def _connack(receive_maximum: int | None) -> bytes:
    if receive_maximum is None:
        return CONNACK_OK
    props = bytes([RECEIVE_MAXIMUM_PROPERTY]) + receive_maximum.to_bytes(2, "big")
    body = bytes([0, 0, len(props)]) + props
    return bytes([0x20, len(body)]) + body


def _parse_publish(head: int, body: bytes) -> tuple[str, bytes, bytes]:
    """(topic, payload, packet id) of a v5 PUBLISH."""
    topic_len = int.from_bytes(body[:2], "big")
    topic = body[2:2 + topic_len].decode()
    i = 2 + topic_len
    pid = b""
    if (head >> 1) & 0x3:
        pid, i = body[i:i + 2], i + 2
    props_len, i = _varint(body, i)
    return topic, body[i + props_len:], pid


class ScriptedBroker:
    """A listening socket on 127.0.0.1; ``script(n)`` says how to treat connection ``n``."""

    def __init__(self, script: Callable[[int], Behaviour]) -> None:
        self._script = script
        self._listener = socket.create_server((LOCALHOST, 0))
        self._listener.settimeout(SOCKET_POLL_S)
        self.port = int(self._listener.getsockname()[1])
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._spawn(self._accept)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, name="test-scripted-broker")
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                conn = Connection(time.monotonic())
                self.connections.append(conn)
                behaviour = self._script(len(self.connections) - 1)
                self._socks.append(sock)
            self._spawn(self._serve, sock, conn, behaviour)

    def _serve(self, sock: socket.socket, conn: Connection, behaviour: Behaviour) -> None:
        sock.settimeout(SOCKET_POLL_S)
        unacked: list[bytes] = []  # packet ids
        try:
            while not self._stop.is_set():
                try:
                    head, body = _read_packet(sock)
                except TimeoutError:
                    for pid in unacked:
                        sock.sendall(bytes([PUBACK << 4, 2]) + pid)
                    unacked.clear()
                    continue
                kind = head >> 4
                if kind == CONNECT and behaviour.connack:
                    sock.sendall(_connack(behaviour.receive_maximum))
                    if behaviour.kick_with is not None:
                        sock.sendall(bytes([DISCONNECT << 4, 2, behaviour.kick_with, 0]))
                        return
                elif kind == PUBLISH:
                    topic, payload, pid = _parse_publish(head, body)
                    if pid and behaviour.puback:
                        unacked.append(pid)
                    with self._lock:
                        conn.published.append((topic, payload))
                        conn.most_unacked = max(conn.most_unacked, len(unacked))
                    if not behaviour.ack_when_idle:
                        for p in unacked:  # reason code omitted: success
                            sock.sendall(bytes([PUBACK << 4, 2]) + p)
                        unacked.clear()
                elif kind == PINGREQ:
                    sock.sendall(PINGRESP)
                elif kind == DISCONNECT:
                    return
        except (_Closed, OSError):
            return
        finally:
            sock.close()

    def snapshot(self) -> list[Connection]:
        with self._lock:
            return [Connection(c.opened, list(c.published), c.most_unacked)
                    for c in self.connections]

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):  # already closed by its handler
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(JOIN_S)


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[int], Behaviour]], ScriptedBroker]]:
    made: list[ScriptedBroker] = []

    def make(script: Callable[[int], Behaviour]) -> ScriptedBroker:
        broker = ScriptedBroker(script)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def test_broker_that_never_acks_is_dropped_after_ack_timeout_and_nothing_is_lost(
    scripted: Callable[[Callable[[int], Behaviour]], ScriptedBroker], outbox: Outbox,
    start_uplink: UplinkFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    # The first connection takes everything and acknowledges nothing, yet answers pings.
    broker = scripted(lambda n: Behaviour(puback=n > 0))
    events = [make_event(n) for n in range(5)]
    for e in events:
        outbox.add(e)
    with caplog.at_level(logging.WARNING, logger="edge_agent.deliver.mqtt"):
        uplink = start_uplink(mqtt_config(broker.port, ack_timeout_s=ACK_TIMEOUT_S), outbox)
        wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "delivery on a new connection")
    first, second = broker.snapshot()[:2]
    ids = [e.id for e in events]
    assert first.event_ids() == ids  # sent, never acknowledged
    assert second.event_ids() == ids  # re-sent in order on a fresh connection
    assert second.opened - first.opened >= ACK_TIMEOUT_S
    stats = uplink.stats()
    assert stats["ack_timeouts"] == 1
    assert stats["acked"] == len(events)
    assert f"no PUBACK within {ACK_TIMEOUT_S:g} s" in caplog.text


def test_broker_that_never_answers_connect_is_retried(
    scripted: Callable[[Callable[[int], Behaviour]], ScriptedBroker], outbox: Outbox,
    start_uplink: UplinkFactory, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(link, "CONNACK_TIMEOUT_S", CONNACK_TIMEOUT_S)
    broker = scripted(lambda n: Behaviour(connack=n > 0))
    event = make_event(1)
    outbox.add(event)
    with caplog.at_level(logging.WARNING, logger="edge_agent.deliver.mqtt"):
        uplink = start_uplink(mqtt_config(broker.port), outbox)
        wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "delivery after a retry")
    conns = broker.snapshot()
    assert conns[0].published == []
    assert conns[1].event_ids() == [event.id]
    assert conns[1].opened - conns[0].opened >= CONNACK_TIMEOUT_S
    assert uplink.stats()["connect_failures"] == 1
    assert f"no answer to CONNECT within {CONNACK_TIMEOUT_S:g} s" in caplog.text


def test_session_taken_over_is_named_and_backs_off(
    scripted: Callable[[Callable[[int], Behaviour]], ScriptedBroker], outbox: Outbox,
    start_uplink: UplinkFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    broker = scripted(
        lambda n: Behaviour(kick_with=SESSION_TAKEN_OVER if n < TAKEOVERS else None)
    )
    event = make_event(1)
    outbox.add(event)
    cfg = mqtt_config(broker.port, client_id="gateway-dup")
    with caplog.at_level(logging.WARNING, logger="edge_agent.deliver.mqtt"):
        uplink = start_uplink(cfg, outbox)
        wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "delivery once it stops")
    conns = broker.snapshot()
    assert conns[TAKEOVERS].event_ids() == [event.id]
    stats = uplink.stats()
    assert stats["session_takeovers"] == TAKEOVERS
    # Not at once: each takeover waited a doubling backoff, capped at backoff_max_s.
    nominal, delay = 0.0, cfg.backoff_initial_s
    for _ in range(TAKEOVERS):
        nominal += delay
        delay = min(delay * 2, cfg.backoff_max_s)
    assert conns[TAKEOVERS].opened - conns[0].opened >= BACKOFF_JITTER_MIN * nominal
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors, caplog.text
    assert "'gateway-dup'" in errors[0]
    assert "another client" in errors[0]
    assert "0x8E Session taken over" in errors[0]
    assert len(errors) == 1  # throttled: one line, not one per takeover


def test_events_in_flight_stay_within_the_brokers_receive_maximum(
    scripted: Callable[[Callable[[int], Behaviour]], ScriptedBroker], outbox: Outbox,
    start_uplink: UplinkFactory,
) -> None:
    most = 6
    broker = scripted(lambda n: Behaviour(receive_maximum=most, ack_when_idle=True))
    events = [make_event(n) for n in range(40)]
    for e in events:
        outbox.add(e)
    uplink = start_uplink(mqtt_config(broker.port, max_inflight=50), outbox)
    wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "delivery")
    (conn,) = broker.snapshot()
    assert conn.event_ids() == [e.id for e in events]
    assert 1 < conn.most_unacked <= most  # pipelined, yet never beyond the broker's limit
    assert uplink.stats()["connects"] == 1
