"""The polling engine of one Modbus link (a TCP connection or an RS-485 bus) and its devices.

Sits at the start of the pipeline: :class:`ModbusLinkSource` polls every device of one link on
its own fixed-rate schedule and hands each device's readings to the sink. ``modbus_tcp`` and
``modbus_rtu`` only say how to make the pymodbus client.

Requests go one at a time (an RS-485 bus is half duplex). A broken link is reopened with capped
exponential backoff; a device that stops answering while the link works is backed off on its
own, so a dead slave cannot steal the bus time of the others, and is still polled at the
backoff rate so it is picked up again when it returns. A device's channels are set to NaN once
when it fails, so data quality can mark them, and then left alone until it recovers.

Only the answer to the request made is data: a reply with another function code, unit id,
transaction id or value count, or whose byte count disagrees with its frame, is a malformed
reply (counted in ``malformed`` and ``poll_errors``, and a device failure like a timeout),
never a reading. An exception response is a device failure too.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from edge_agent.logs import Throttle
from edge_agent.sources.base import ReadingSink, Source
from edge_agent.sources.config import ModbusDevice, ModbusRtuSource, ModbusTcpSource
from edge_agent.sources.registers import (
    BIT_TABLES,
    REGISTER_BYTES,
    ReadPlan,
    decode,
    plan_reads,
)

log = logging.getLogger(__name__)

REPEAT_LOG_EVERY_S = 300.0
BACKOFF_FACTOR = 2.0
# pymodbus renamed the unit argument of its requests from ``slave`` to ``device_id`` in 3.10.
_UNIT_KEYWORD = (
    "device_id"
    if "device_id" in inspect.signature(ModbusClientMixin.read_holding_registers).parameters
    else "slave"
)

ModbusClient = ModbusTcpClient | ModbusSerialClient

# The function code of the read of each table; its answer carries the same code.
READ_FUNCTION_CODE: dict[str, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
EXCEPTION_FLAG = 0x80  # set in the function code of an exception response
BITS_PER_BYTE = 8
READ_HEADER_BYTES = 2  # function code and byte count, before the data of a read answer
SHOWN_REPLY_BYTES = 16  # how much of a malformed reply a log line shows, in hex


class _DeviceFailure(Exception):
    """The link works but this device did not give a usable answer."""


class _MalformedReply(_DeviceFailure):
    """Bytes came back that are not the answer to the request made."""


@dataclass
class _DeviceState:
    cfg: ModbusDevice
    plans: list[ReadPlan]
    backoff_s: float
    next_due: float = 0.0  # time.monotonic() of the next poll
    consecutive_failures: int = 0
    polls: int = 0
    errors: int = 0
    last_ok: float | None = None
    nan_sent: bool = False
    channels: list[str] = field(default_factory=list)


def next_due_after(due: float, period_s: float, now: float) -> float:
    """Fixed-rate schedule: one period after ``due`` (not after ``now``, so timing never
    drifts); late by more than a period, skip the missed slots instead of bursting."""
    nxt = due + period_s
    late = now - nxt
    if late > period_s:
        nxt += math.floor(late / period_s) * period_s
    return nxt


class ModbusLinkSource(Source):
    """One Modbus link with its devices, polled from one thread."""

    def __init__(
        self, cfg: ModbusTcpSource | ModbusRtuSource, *, repeat_every_s: float = REPEAT_LOG_EVERY_S
    ) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self._devices = [
            _DeviceState(
                cfg=d,
                plans=plan_reads(d.points, max_gap=d.max_gap),
                backoff_s=cfg.backoff_initial_s,
                channels=[p.channel for p in d.points],
            )
            for d in cfg.devices
        ]
        self._throttle = Throttle(log, repeat_every_s)
        self._lock = threading.Lock()
        self._link_up = False
        self._received = b""  # bytes received since the last request went out
        # pymodbus logs an error for every unanswered request; this engine reports failures
        # itself, throttled, so a dead device cannot fill the SD card.
        pymodbus_log = logging.getLogger("pymodbus")
        pymodbus_log.setLevel(max(pymodbus_log.level, logging.CRITICAL))

    @abstractmethod
    def _make_client(self) -> ModbusClient:
        """A new, unconnected pymodbus sync client for this link, made with
        ``trace_packet=self._trace_packet`` (replies are checked against their bytes)."""

    @abstractmethod
    def describe(self) -> str:
        """Where the link goes, for log lines (host:port or serial device)."""

    @property
    def channels(self) -> list[str]:
        return [ch for d in self._devices for ch in d.channels]

    def device_status(self) -> dict[str, dict[str, float | int | bool]]:
        """Per device: ok, consecutive_failures, polls, errors, last_ok_age_s (inf if never)."""
        now = time.monotonic()
        with self._lock:
            return {
                d.cfg.name: {
                    "ok": self._link_up and d.last_ok is not None and d.consecutive_failures == 0,
                    "consecutive_failures": d.consecutive_failures,
                    "polls": d.polls,
                    "errors": d.errors,
                    "last_ok_age_s": math.inf if d.last_ok is None else now - d.last_ok,
                }
                for d in self._devices
            }

    def _run(self, sink: ReadingSink) -> None:
        client = self._make_client()
        try:
            self._loop(client, sink)
        finally:
            client.close()  # type: ignore[no-untyped-call]  # pymodbus leaves it untyped
            with self._lock:
                self._link_up = False

    def _loop(self, client: ModbusClient, sink: ReadingSink) -> None:
        link_backoff_s = self.cfg.backoff_initial_s
        connected_before = False
        while not self._stop.is_set():
            if not client.connected:
                if not client.connect():
                    # A failed connect is a failed poll to whoever watches the error rate.
                    self.counters.polls += 1
                    self.counters.poll_errors += 1
                    self._link_failed(sink, f"cannot connect to {self.describe()}")
                    link_backoff_s = self._link_backoff(link_backoff_s)
                    continue
                self._link_restored(reconnect=connected_before)
                connected_before = True
            dev = min(self._devices, key=lambda d: d.next_due)
            wait_s = dev.next_due - time.monotonic()
            if wait_s > 0:
                self._stop.wait(wait_s)
                continue
            try:
                readings = self._read_device(client, dev)
            except _DeviceFailure as exc:
                self._device_failed(dev, sink, str(exc))
            except (ModbusException, OSError) as exc:
                # Only a closed connection means the link is down; a timeout with the socket
                # still open is this device not answering.
                if isinstance(exc, ConnectionException | OSError) or not client.connected:
                    client.close()  # type: ignore[no-untyped-call]  # pymodbus leaves it untyped
                    with self._lock:
                        dev.polls += 1
                        dev.errors += 1
                        dev.consecutive_failures += 1
                    self._link_failed(sink, f"{self.describe()}: {exc}")
                    # A peer that accepts and then drops every connection must not make this a
                    # busy loop: the link backs off as if the connect had failed, until a poll
                    # over it succeeds.
                    link_backoff_s = self._link_backoff(link_backoff_s)
                else:
                    self._device_failed(dev, sink, str(exc))
            else:
                link_backoff_s = self.cfg.backoff_initial_s
                self._device_ok(dev, sink, readings)

    def _link_backoff(self, wait_s: float) -> float:
        """Wait ``wait_s`` before the next connect; returns the wait after the next failure."""
        self._stop.wait(wait_s)
        return min(wait_s * BACKOFF_FACTOR, self.cfg.backoff_max_s)

    def _read_device(self, client: ModbusClient, dev: _DeviceState) -> dict[str, float]:
        readings: dict[str, float] = {}
        for plan in dev.plans:
            self.counters.polls += 1
            try:
                values = self._answer(client, plan, dev.cfg.unit_id)
            except Exception as exc:
                self.counters.poll_errors += 1
                if isinstance(exc, _MalformedReply):
                    self.counters.malformed += 1
                raise
            for point, offset in plan.points:
                readings[point.channel] = decode(point, values[offset : offset + point.width])
        return readings

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus hook (``trace_packet``): sees each request as it is sent and the receive
        buffer as it grows, so a reply can be checked against the bytes that carried it."""
        self._received = b"" if sending else data
        return data

    def _answer(self, client: ModbusClient, plan: ReadPlan, unit_id: int) -> list[int]:
        """The ``plan.count`` values (registers, or 0/1 bits) that answer ``plan``; raises
        :class:`_MalformedReply` for anything else that came back, :class:`_DeviceFailure`
        for an exception response, and pymodbus' own errors when nothing came back."""
        try:
            response = _request(client, plan, unit_id)
        except ConnectionException:
            raise
        except Exception as exc:
            # Whatever pymodbus raises after bytes arrived (a frame it skipped for another
            # unit or transaction id, one it could not decode) means the device answered,
            # but not with an answer to this request.
            if self._received and client.connected:
                raise _MalformedReply(
                    f"{exc}; received {self._received[:SHOWN_REPLY_BYTES].hex()}"
                ) from exc
            raise
        want = READ_FUNCTION_CODE[plan.table]
        if response.function_code & ~EXCEPTION_FLAG != want:
            raise _MalformedReply(
                f"answer with function code {response.function_code} to a request with {want}"
            )
        if response.dev_id != unit_id:
            raise _MalformedReply(f"answer from unit {response.dev_id}, not {unit_id}")
        if isinstance(response, ExceptionResponse):
            raise _DeviceFailure(f"exception response, code {response.exception_code}")
        self._check_frame(client, plan, response)  # so the count of values is plan.count
        if plan.table in BIT_TABLES:
            return [int(b) for b in response.bits[: plan.count]]
        return list(response.registers)

    def _check_frame(self, client: ModbusClient, plan: ReadPlan, response: ModbusPDU) -> None:
        """The byte count of the answer must be what ``plan`` asks for and agree with the
        data that follows it; pymodbus decodes by the byte count alone, and ignores extra
        bytes, so that is checked here on the frame as it arrived."""
        bits = plan.table in BIT_TABLES
        want = math.ceil(plan.count / BITS_PER_BYTE) if bits else plan.count * REGISTER_BYTES
        pdu = _frame_pdu(client, self._received, response)
        if pdu is None:
            raise _MalformedReply("the answer is not in the bytes received")
        got = pdu[1] if len(pdu) > 1 else 0
        data = len(pdu) - READ_HEADER_BYTES
        if got != want or data != want:
            raise _MalformedReply(
                f"byte count {got} with {data} data bytes; {plan.count} "
                f"{'bits' if bits else 'registers'} need {want}; "
                f"PDU {pdu[:SHOWN_REPLY_BYTES].hex()}"
            )

    def _device_ok(self, dev: _DeviceState, sink: ReadingSink, readings: dict[str, float]) -> None:
        now = time.monotonic()
        sink.put(self.name, readings, time.time())
        self.counters.samples += len(readings)
        with self._lock:
            dev.polls += 1
            dev.last_ok = now
            dev.consecutive_failures = 0
            dev.backoff_s = self.cfg.backoff_initial_s
            dev.nan_sent = False
            dev.next_due = next_due_after(dev.next_due, dev.cfg.poll_period_s, now)
        # The link counts as back only now: one that connects and drops again at once
        # (flapping) stays one throttled warning, not a warning and a recovery per cycle.
        self._throttle.clear(
            f"{self.name}:link", "%s: link to %s is up again", self.name, self.describe()
        )
        self._throttle.clear(
            self._key(dev),
            "%s: device %s (unit %d) answers again",
            self.name,
            dev.cfg.name,
            dev.cfg.unit_id,
        )

    def _device_failed(self, dev: _DeviceState, sink: ReadingSink, why: str) -> None:
        now = time.monotonic()
        with self._lock:
            dev.polls += 1
            dev.errors += 1
            dev.consecutive_failures += 1
            regular = next_due_after(dev.next_due, dev.cfg.poll_period_s, now)
            dev.next_due = max(regular, now + dev.backoff_s)
            dev.backoff_s = min(dev.backoff_s * BACKOFF_FACTOR, self.cfg.backoff_max_s)
        self._send_nan_once(dev, sink)
        self._throttle.warning(
            self._key(dev),
            "%s: device %s (unit %d) not answering (%s); retrying at most every %.3g s",
            self.name,
            dev.cfg.name,
            dev.cfg.unit_id,
            why,
            self.cfg.backoff_max_s,
        )

    def _link_failed(self, sink: ReadingSink, why: str) -> None:
        with self._lock:
            self._link_up = False
        for dev in self._devices:
            self._send_nan_once(dev, sink)
        self._throttle.warning(
            f"{self.name}:link",
            "%s: link down (%s); reconnecting with backoff up to %.3g s",
            self.name,
            why,
            self.cfg.backoff_max_s,
        )

    def _link_restored(self, *, reconnect: bool) -> None:
        now = time.monotonic()
        with self._lock:
            self._link_up = True
            for dev in self._devices:
                dev.next_due = now
        if reconnect:
            self.counters.reconnects += 1

    def _send_nan_once(self, dev: _DeviceState, sink: ReadingSink) -> None:
        if dev.nan_sent:
            return
        dev.nan_sent = True
        sink.put(self.name, dict.fromkeys(dev.channels, math.nan), time.time())

    def _key(self, dev: _DeviceState) -> str:
        return f"{self.name}:{dev.cfg.name}"


def _frame_pdu(client: ModbusClient, received: bytes, response: ModbusPDU) -> bytes | None:
    """The PDU bytes (function code onwards) of the frame in ``received`` that pymodbus
    decoded as ``response``: the first with its unit and transaction id, as pymodbus takes."""
    rest = received
    while rest:
        used, dev_id, tid, pdu = client.framer.decode(rest)
        if not used:
            return None
        if pdu and dev_id == response.dev_id and tid == response.transaction_id:
            return pdu
        rest = rest[used:]
    return None


def _request(client: ModbusClient, plan: ReadPlan, unit_id: int) -> ModbusPDU:
    kwargs: dict[str, Any] = {"count": plan.count, _UNIT_KEYWORD: unit_id}
    read = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }[plan.table]
    return read(plan.address, **kwargs)
