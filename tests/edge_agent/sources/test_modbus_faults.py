"""The Modbus engine against a peer that misbehaves: a raw-socket Modbus TCP server.

pymodbus' own server always answers correctly, so the faults a real PLC, gateway or noisy
link produces are played here by a small server written on plain sockets. It reads each MBAP
request and answers per its ``fault``: another function code, another unit or transaction
id, frames whose byte count disagrees with their data, garbage, an exception code, a reply
after the client's timeout, no reply, a connection closed mid-frame. Every fault reply
carries POISON in its registers (and set bits where the good value is clear), so a fault
taken for data shows up in what the sink received. For each fault the source must keep
polling, deliver nothing wrong, count the errors, and deliver fresh values once the server
behaves again.
"""

from __future__ import annotations

import logging
import math
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from test_modbus_tcp import Sink, run, tcp_cfg  # noqa: F401 (run: a fixture)
from waiting import wait_for

from edge_agent.service.supervisor import RestartPolicy
from edge_agent.sources.config import ModbusTcpSource
from edge_agent.sources.modbus_tcp import ModbusTcp

HOST = "127.0.0.1"
TIMEOUT_S = 0.1  # the source's per-request timeout
LATE_S = 2.5 * TIMEOUT_S  # a late reply comes after the client gave up on it
SELECT_S = 0.02  # how often the server thread looks at its stop flag
POISON = 0xDEAD  # register value of every fault reply; never a good value
GOOD_BASE = 1000  # good replies: register a holds GOOD_BASE + a (the coil is clear)
RECOVERED_BASE = 2000  # what the server serves once it behaves again
MBAP_BYTES = 7  # transaction id, protocol id, length, unit id
REQUEST_PDU_BYTES = 5  # function code, address, count
READ_CODES = (1, 2, 3, 4)  # coils, discrete inputs, holding, input registers
OTHER_TABLE = {1: 2, 2: 1, 3: 4, 4: 3}
EXCEPTION_BIT = 0x80
GARBAGE = random.Random(7).randbytes(23)  # line noise instead of a reply
ILLEGAL_DATA_ADDRESS = 2


@dataclass(frozen=True)
class Request:
    tid: int
    unit: int
    code: int
    address: int
    count: int

    @property
    def bits(self) -> bool:
        return self.code in (1, 2)


def mbap(tid: int, unit: int, pdu: bytes, *, length: int | None = None) -> bytes:
    """An MBAP frame; ``length`` overrides the header's length field (a lying header)."""
    size = len(pdu) + 1 if length is None else length
    return struct.pack(">HHHB", tid, 0, size, unit) + pdu


def data_bytes(req: Request, base: int | None) -> bytes:
    """The data of a read reply: registers ``base + address`` (POISON if ``base`` is None);
    bits all clear (all set for POISON)."""
    if req.bits:
        return (b"\x00" if base is not None else b"\xff") * ((req.count + 7) // 8)
    values = [POISON if base is None else base + req.address + i for i in range(req.count)]
    return struct.pack(f">{req.count}H", *values)


def read_pdu(code: int, data: bytes, byte_count: int | None = None) -> bytes:
    count = len(data) if byte_count is None else byte_count
    return bytes([code, count]) + data


# What each fault sends for a request (a frame, or None for silence); "late" and "close" are
# timing and connection faults the server loop plays itself.
def _poison(req: Request) -> bytes:
    return data_bytes(req, None)


FAULTS: dict[str, Callable[[Request], bytes | None]] = {
    "wrong_function_code": lambda r: mbap(
        r.tid, r.unit, read_pdu(OTHER_TABLE[r.code], _poison(r))
    ),
    "wrong_unit_id": lambda r: mbap(r.tid, r.unit + 1, read_pdu(r.code, _poison(r))),
    "wrong_transaction_id": lambda r: mbap(r.tid + 1, r.unit, read_pdu(r.code, _poison(r))),
    "too_many_values": lambda r: mbap(
        r.tid, r.unit, read_pdu(r.code, _poison(r) + (b"\xff" if r.bits else b"\xde\xad"))
    ),
    "too_few_values": lambda r: mbap(
        r.tid, r.unit, read_pdu(r.code, _poison(r)[: -1 if r.bits else -2])
    ),
    # the byte count says more than the frame holds
    "byte_count_too_large": lambda r: mbap(
        r.tid, r.unit, read_pdu(r.code, _poison(r), len(_poison(r)) + 2)
    ),
    # the byte count says less than the frame holds
    "byte_count_too_small": lambda r: mbap(
        r.tid, r.unit, read_pdu(r.code, _poison(r), len(_poison(r)) - 1)
    ),
    # an odd byte count with one byte more than the values need
    "byte_count_odd": lambda r: mbap(
        r.tid, r.unit, read_pdu(r.code, _poison(r) + b"\x00")
    ),
    # a correct byte count, but the frame carries two bytes more
    "trailing_bytes": lambda r: mbap(
        r.tid, r.unit, read_pdu(r.code, _poison(r), len(_poison(r))) + b"\xde\xad"
    ),
    # the PDU ends inside its data; the header agrees with what was sent
    "truncated_pdu": lambda r: mbap(
        r.tid, r.unit, read_pdu(r.code, _poison(r)[:-1], len(_poison(r)))
    ),
    # the header promises a longer frame than ever comes
    "truncated_frame": lambda r: mbap(
        r.tid, r.unit, read_pdu(r.code, _poison(r)), length=len(_poison(r)) + 6
    ),
    "garbage": lambda r: GARBAGE,
    "exception_code": lambda r: mbap(
        r.tid, r.unit, bytes([r.code | EXCEPTION_BIT, ILLEGAL_DATA_ADDRESS])
    ),
    "unknown_function_code": lambda r: mbap(r.tid, r.unit, read_pdu(0x41, _poison(r))),
    "no_reply": lambda r: None,
}
# faults where bytes arrive that are not the answer: the source must count them as malformed
# (a late reply is one too: it comes while the client waits for the answer to another request)
MALFORMED = (set(FAULTS) | {"late_reply"}) - {"exception_code", "no_reply"}


class RawModbusServer:
    """A Modbus TCP server on 127.0.0.1:ephemeral, one connection at a time, in a thread."""

    def __init__(self) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.port: int = self.listener.getsockname()[1]
        self.fault: str | None = None  # None: answer correctly
        self.base = GOOD_BASE
        self.requests = 0
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="raw-modbus", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.listener], [], [], SELECT_S)[0]:
                continue
            conn, _ = self.listener.accept()
            self.connections += 1
            with conn:
                self._talk(conn)

    def _talk(self, conn: socket.socket) -> None:
        buf = b""
        while not self._stop.is_set():
            if not select.select([conn], [], [], SELECT_S)[0]:
                continue
            data = conn.recv(4096)
            if not data:
                return
            buf += data
            while len(buf) >= MBAP_BYTES + REQUEST_PDU_BYTES:
                tid, _, length, unit = struct.unpack(">HHHB", buf[:MBAP_BYTES])
                code, address, count = struct.unpack(
                    ">BHH", buf[MBAP_BYTES : MBAP_BYTES + REQUEST_PDU_BYTES]
                )
                buf = buf[6 + length :]
                assert code in READ_CODES, code
                self.requests += 1
                if not self._answer(conn, Request(tid, unit, code, address, count)):
                    return

    def _answer(self, conn: socket.socket, req: Request) -> bool:
        """Send what the fault says; False when the connection was closed."""
        fault = self.fault
        good = mbap(req.tid, req.unit, read_pdu(req.code, data_bytes(req, self.base)))
        if fault is None:
            conn.sendall(good)
        elif fault == "late_reply":
            # The reply to this request, with its own transaction id, after the client's
            # timeout: while the client waits for the answer to its next request.
            if self._stop.wait(LATE_S):
                return False
            conn.sendall(mbap(req.tid, req.unit, read_pdu(req.code, _poison(req))))
        elif fault == "closed_mid_frame":
            frame = mbap(req.tid, req.unit, read_pdu(req.code, _poison(req)))
            conn.sendall(frame[: len(frame) // 2])
            return False
        elif (reply := FAULTS[fault](req)) is not None:
            conn.sendall(reply)
        return True


def values(sink: Sink, channel: str) -> list[float]:
    """What the sink received for ``channel``, in order."""
    return [r[channel] for r, _ in sink.of("plc", channel)]


def config(port: int) -> ModbusTcpSource:
    points = [
        {"channel": "p0", "address": 0},
        {"channel": "p1", "address": 1},
        {"channel": "c", "table": "coil", "address": 0, "type": "bool"},
    ]
    device = {"name": "d", "unit_id": 1, "poll_period_s": 0.03, "points": points}
    return tcp_cfg(
        "plc", port, [device],
        timeout_s=TIMEOUT_S, retries=0, backoff_initial_s=0.02, backoff_max_s=0.1,
    )


@pytest.fixture
def server() -> Iterator[RawModbusServer]:
    srv = RawModbusServer()
    yield srv
    srv.stop()


def only_good_values(sink: Sink) -> None:
    """Every value delivered is one the server served correctly, or NaN (device failed)."""
    for address, ch in enumerate(("p0", "p1")):
        good = {GOOD_BASE + address, RECOVERED_BASE + address}
        wrong = [v for v in values(sink, ch) if not math.isnan(v) and v not in good]
        assert not wrong, f"{ch} received values the server never served: {wrong[:5]}"
    wrong_bits = [v for v in values(sink, "c") if not math.isnan(v) and v != 0.0]
    assert not wrong_bits, "the coil was read as set, which only fault replies say"


@pytest.mark.parametrize("fault", [*FAULTS, "late_reply", "closed_mid_frame"])
def test_a_misbehaving_peer_never_delivers_wrong_values(
    fault: str,
    server: RawModbusServer,
    run: Callable[[Any], Any],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.sources.modbus")
    source, sink = run(ModbusTcp(config(server.port))), Sink()
    source.start(sink)
    assert wait_for(lambda: len(values(sink, "p0")) >= 2)

    caplog.clear()
    server.fault = fault
    before = source.counters.snapshot()
    assert wait_for(lambda: source.counters.poll_errors >= before["poll_errors"] + 4)
    errors = source.counters.snapshot()
    if fault in MALFORMED:
        assert errors["malformed"] > before["malformed"], errors
    else:
        assert errors["malformed"] == before["malformed"], errors
    assert source.device_status()["d"]["ok"] is False
    assert math.isnan(values(sink, "p0")[-1])  # the failed device's channels are marked once
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings  # the fault repeats every poll; its warning does not

    server.fault, server.base = None, RECOVERED_BASE
    assert wait_for(lambda: RECOVERED_BASE in values(sink, "p0"), 3.0)
    assert wait_for(lambda: source.device_status()["d"]["ok"] is True)
    only_good_values(sink)
    assert source.running
    assert source.health.status()["crashes"] == 0  # handled in the source, not by a restart


class CrashesOnFirstPoll(ModbusTcp):
    """A real TCP source with a bug that fires once: the first poll raises."""

    crashed = False

    def _read_device(self, client: Any, dev: Any) -> dict[str, float]:
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("injected bug in the first poll")
        return super()._read_device(client, dev)


def test_a_crash_in_the_poll_loop_is_restarted_by_the_supervisor(
    server: RawModbusServer, run: Callable[[Any], Any]  # noqa: F811
) -> None:
    source, sink = run(CrashesOnFirstPoll(config(server.port))), Sink()
    source.health.policy = RestartPolicy(initial_s=0.05, max_s=0.1)
    began = time.monotonic()
    source.start(sink)
    assert wait_for(lambda: len(values(sink, "p0")) >= 3)
    status = source.health.status()
    assert status["crashes"] == 1
    assert status["running"] is True
    assert status["last_error"] == "RuntimeError: injected bug in the first poll"
    assert values(sink, "p0")[-1] == GOOD_BASE
    assert time.monotonic() - began < 3.0


def test_a_peer_that_drops_every_connection_is_reconnected_with_backoff(
    server: RawModbusServer, run: Callable[[Any], Any]  # noqa: F811
) -> None:
    source, sink = run(ModbusTcp(config(server.port))), Sink()
    source.start(sink)
    assert wait_for(lambda: len(values(sink, "p0")) >= 2)
    server.fault = "closed_mid_frame"
    assert wait_for(lambda: source.counters.reconnects >= 2)
    window_s, max_wait_s = 1.0, config(server.port).backoff_max_s
    first = server.connections
    time.sleep(window_s)
    # at most one connection per capped backoff (and a few while it doubles up to the cap),
    # not a busy loop of connect, request, drop
    assert server.connections - first <= window_s / max_wait_s + 3
    assert source.device_status()["d"]["ok"] is False
