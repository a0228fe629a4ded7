"""The simulated PLCs and RS-485 slaves of ``edge_agent simulate``: real pymodbus servers.

Part of the simulator that stands in for a plant: one Modbus TCP server per ``modbus_tcp``
source and one RTU server per ``modbus_rtu`` source (on its pty pair), each with one unit per
configured device, all in one asyncio event loop on a thread of their own. The simulator loop
publishes each row with :meth:`ModbusEndpoint.publish`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from pymodbus.server import ModbusBaseServer, ModbusSerialServer, ModbusTcpServer

from edge_agent.errors import ConfigError
from edge_agent.simulate.store import UnitTables, Writes, placeholder_device
from edge_agent.sources.config import ModbusRtuSource, ModbusTcpSource
from edge_agent.sources.registers import encode

CALL_TIMEOUT_S = 10.0  # starting or stopping a server takes milliseconds
JOIN_TIMEOUT_S = 5.0

T = TypeVar("T")


class ServerLoop:
    """An asyncio event loop on a daemon thread, where the pymodbus servers run."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="simulate-servers", daemon=True
        )
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` in the loop and wait for its result."""
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(CALL_TIMEOUT_S)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(JOIN_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()


class ModbusEndpoint:
    """One served Modbus link: its server and the register tables of its units."""

    def __init__(self, source: ModbusTcpSource | ModbusRtuSource, loop: ServerLoop) -> None:
        self.source = source
        self._loop = loop
        self.tables = UnitTables({d.unit_id for d in source.devices})
        self._server: ModbusBaseServer | None = None

    def encode_row(self, row: Mapping[str, float]) -> Writes:
        """The register writes that publish ``row``; a value an integer type cannot hold
        (NaN) leaves the point's last value in place."""
        writes: dict[Any, list[int]] = {}
        for device in self.source.devices:
            for point in device.points:
                try:
                    words = encode(point, row[point.channel])
                except ValueError:
                    continue
                writes[(device.unit_id, point.table, point.address)] = words
        return writes

    def publish(self, row: Mapping[str, float]) -> None:
        """Make ``row`` what the next requests read (applied atomically in the loop)."""
        self._loop.loop.call_soon_threadsafe(self.tables.write, self.encode_row(row))

    def start(self, sim_port: str | None = None) -> None:
        """Listen: on the source's host and port (TCP), or on ``sim_port`` (RTU)."""
        self._server = self._loop.call(self._listen(sim_port))

    async def _listen(self, sim_port: str | None) -> ModbusBaseServer:
        src = self.source
        server: ModbusBaseServer
        if isinstance(src, ModbusTcpSource):
            server = ModbusTcpServer(
                placeholder_device(), address=(src.host, src.port), ignore_missing_devices=True
            )
            where = f"{src.host}:{src.port}"
        else:
            server = ModbusSerialServer(
                placeholder_device(),
                port=sim_port or src.port,
                baudrate=src.baudrate,
                bytesize=src.bytesize,
                parity=src.parity,
                stopbits=src.stopbits,
                ignore_missing_devices=True,
            )
            where = sim_port or src.port
        server.context = self.tables
        try:
            await server.serve_forever(background=True)
        except RuntimeError:
            raise ConfigError(
                f"simulate: source {src.name!r} cannot listen on {where} (in use, or not "
                "allowed); pick another address or port"
            ) from None
        return server

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self._loop.call(server.shutdown())  # type: ignore[no-untyped-call]
