"""The polling engine of one Modbus link (a TCP connection or an RS-485 bus) and its devices.

Sits at the start of the pipeline: :class:`ModbusLinkSource` polls every device of one link on
its own fixed-rate schedule and hands each device's readings to the sink. ``modbus_tcp`` and
``modbus_rtu`` only say how to make the pymodbus client.

Requests go one at a time (an RS-485 bus is half duplex). A broken link is reopened with capped
exponential backoff; a device that stops answering while the link works is backed off on its
own, so a dead slave cannot steal the bus time of the others, and is still polled at the
backoff rate so it is picked up again when it returns. A device's channels are set to NaN once
when it fails, so data quality can mark them, and then left alone until it recovers.
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
from pymodbus.pdu import ModbusPDU

from edge_agent.logs import Throttle
from edge_agent.sources.base import ReadingSink, Source
from edge_agent.sources.config import ModbusDevice, ModbusRtuSource, ModbusTcpSource
from edge_agent.sources.registers import BIT_TABLES, ReadPlan, decode, plan_reads

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


class _DeviceFailure(Exception):
    """The link works but this device did not give a usable answer."""


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
        # pymodbus logs an error for every unanswered request; this engine reports failures
        # itself, throttled, so a dead device cannot fill the SD card.
        pymodbus_log = logging.getLogger("pymodbus")
        pymodbus_log.setLevel(max(pymodbus_log.level, logging.CRITICAL))

    @abstractmethod
    def _make_client(self) -> ModbusClient:
        """A new, unconnected pymodbus sync client for this link."""

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
                    self._stop.wait(link_backoff_s)
                    link_backoff_s = min(link_backoff_s * BACKOFF_FACTOR, self.cfg.backoff_max_s)
                    continue
                link_backoff_s = self.cfg.backoff_initial_s
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
                    self._link_failed(sink, f"{self.describe()}: {exc}")
                else:
                    self._device_failed(dev, sink, str(exc))
            else:
                self._device_ok(dev, sink, readings)

    def _read_device(self, client: ModbusClient, dev: _DeviceState) -> dict[str, float]:
        readings: dict[str, float] = {}
        for plan in dev.plans:
            self.counters.polls += 1
            try:
                response = _request(client, plan, dev.cfg.unit_id)
            except Exception:
                self.counters.poll_errors += 1
                raise
            if response.isError():
                self.counters.poll_errors += 1
                raise _DeviceFailure(f"exception response {response!s}")
            values = response.bits if plan.table in BIT_TABLES else response.registers
            if len(values) < plan.count:
                self.counters.poll_errors += 1
                self.counters.malformed += 1
                raise _DeviceFailure(f"asked for {plan.count} values, got {len(values)}")
            for point, offset in plan.points:
                readings[point.channel] = decode(point, values[offset : offset + point.width])
        return readings

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
        self._throttle.clear(
            f"{self.name}:link", "%s: link to %s is up again", self.name, self.describe()
        )

    def _send_nan_once(self, dev: _DeviceState, sink: ReadingSink) -> None:
        if dev.nan_sent:
            return
        dev.nan_sent = True
        sink.put(self.name, dict.fromkeys(dev.channels, math.nan), time.time())

    def _key(self, dev: _DeviceState) -> str:
        return f"{self.name}:{dev.cfg.name}"


def _request(client: ModbusClient, plan: ReadPlan, unit_id: int) -> ModbusPDU:
    kwargs: dict[str, Any] = {"count": plan.count, _UNIT_KEYWORD: unit_id}
    read = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }[plan.table]
    return read(plan.address, **kwargs)
