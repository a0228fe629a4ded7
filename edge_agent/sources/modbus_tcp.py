"""Modbus TCP source: a PLC or a TCP gateway with one or more units behind it.

Sits at the start of the pipeline; only makes the pymodbus TCP client. Polling, retries,
backoff and decoding are the shared engine's (:mod:`edge_agent.sources.modbus`).
"""

from __future__ import annotations

from pymodbus.client import ModbusTcpClient

from edge_agent.sources.config import ModbusTcpSource
from edge_agent.sources.modbus import REPEAT_LOG_EVERY_S, ModbusLinkSource


class ModbusTcp(ModbusLinkSource):
    """Polls the devices of one Modbus TCP connection."""

    def __init__(self, cfg: ModbusTcpSource, *, repeat_every_s: float = REPEAT_LOG_EVERY_S) -> None:
        super().__init__(cfg, repeat_every_s=repeat_every_s)
        self.tcp = cfg

    def describe(self) -> str:
        return f"{self.tcp.host}:{self.tcp.port}"

    def _make_client(self) -> ModbusTcpClient:
        return ModbusTcpClient(
            self.tcp.host,
            port=self.tcp.port,
            name=self.name,
            timeout=self.tcp.timeout_s,
            retries=self.tcp.retries,
            trace_packet=self._trace_packet,  # lets the engine check replies byte by byte
        )
