"""Modbus RTU source: one RS-485 bus (a serial port) with one or more slaves on it.

Sits at the start of the pipeline; only makes the pymodbus serial client with the config's
framing. The shared engine (:mod:`edge_agent.sources.modbus`) sends one request at a time, as
a half-duplex bus requires, and backs off a dead slave so the others keep their poll rate.
"""

from __future__ import annotations

from pymodbus.client import ModbusSerialClient

from edge_agent.sources.config import ModbusRtuSource
from edge_agent.sources.modbus import REPEAT_LOG_EVERY_S, ModbusLinkSource


class ModbusRtu(ModbusLinkSource):
    """Polls the slaves of one RS-485 bus."""

    def __init__(self, cfg: ModbusRtuSource, *, repeat_every_s: float = REPEAT_LOG_EVERY_S) -> None:
        super().__init__(cfg, repeat_every_s=repeat_every_s)
        self.rtu = cfg

    def describe(self) -> str:
        framing = f"{self.rtu.bytesize}{self.rtu.parity}{self.rtu.stopbits}"
        return f"{self.rtu.port} ({self.rtu.baudrate} baud {framing})"

    def _make_client(self) -> ModbusSerialClient:
        return ModbusSerialClient(
            self.rtu.port,
            baudrate=self.rtu.baudrate,
            bytesize=self.rtu.bytesize,
            parity=self.rtu.parity,
            stopbits=self.rtu.stopbits,
            name=self.name,
            timeout=self.rtu.timeout_s,
            retries=self.rtu.retries,
            trace_packet=self._trace_packet,  # lets the engine check replies byte by byte
        )
