"""The register memory of the simulated Modbus devices, one set of four tables per unit id.

Part of ``edge_agent simulate`` (the stand-in for a plant's PLCs and RS-485 slaves): the
pymodbus servers answer requests from it, and the simulator loop writes each data row into it
with the points' own encodings. Unconfigured addresses read as zero; a unit id that is not
configured does not answer at all, as a missing slave on a bus would not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from edge_agent.sources.config import RegisterKind

ADDRESS_SPACE = 65536
# Modbus function codes, grouped by the table they touch.
_TABLE_OF_FUNCTION: dict[int, RegisterKind] = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete",
    3: "holding",
    6: "holding",
    16: "holding",
    22: "holding",
    23: "holding",
    4: "input",
}
_TABLES: tuple[RegisterKind, ...] = ("holding", "input", "coil", "discrete")

# (unit id, table, address) -> register words (or 0/1 bits) starting at that address
Writes = Mapping[tuple[int, RegisterKind, int], Sequence[int]]


def placeholder_device() -> SimDevice:
    """What a pymodbus server is built with before :class:`UnitTables` replaces its
    datastore (the constructor accepts only pymodbus's own kinds)."""
    return SimDevice(id=0, simdata=SimData(0, datatype=DataType.UINT16))


class UnitTables(SimCore):
    """Sparse holding/input/coil/discrete tables per unit id, in the server's event loop."""

    def __init__(self, unit_ids: Iterable[int]) -> None:
        # SimCore's own set-up builds pymodbus simulator devices; none are used here.
        self.devices = {}
        self._units: dict[int, dict[RegisterKind, dict[int, int]]] = {
            unit: {table: {} for table in _TABLES} for unit in unit_ids
        }
        # Configured units playing a dead slave: they keep their data but do not answer.
        self.silent: set[int] = set()

    def device_ids(self) -> list[int]:
        return sorted(self._units)

    def write(self, writes: Writes) -> None:
        """Store encoded values; called in the event loop thread so no request sees half a
        row."""
        for (unit, table, address), words in writes.items():
            cells = self._units[unit][table]
            for i, word in enumerate(words):
                cells[address + i] = int(word)

    def read(self, unit: int, table: RegisterKind, address: int, count: int) -> list[int]:
        cells = self._units[unit][table]
        return [cells.get(a, 0) for a in range(address, address + count)]

    def _cells(self, device_id: int, func_code: int) -> dict[int, int] | ExcCodes:
        unit = self._units.get(device_id)
        if unit is None or device_id in self.silent:
            # The server runs with ignore_missing_devices, so this request goes unanswered.
            raise NoSuchIdException(f"unit {device_id} is not simulated")
        table = _TABLE_OF_FUNCTION.get(func_code)
        return ExcCodes.ILLEGAL_FUNCTION if table is None else unit[table]

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        cells = self._cells(device_id, func_code)
        if isinstance(cells, ExcCodes):
            return cells
        if address < 0 or count < 1 or address + count > ADDRESS_SPACE:
            return ExcCodes.ILLEGAL_ADDRESS
        words = [cells.get(a, 0) for a in range(address, address + count)]
        if _TABLE_OF_FUNCTION[func_code] in ("coil", "discrete"):
            return [bool(w) for w in words]
        return words

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        cells = self._cells(device_id, func_code)
        if isinstance(cells, ExcCodes):
            return cells
        if address < 0 or address + len(values) > ADDRESS_SPACE:
            return ExcCodes.ILLEGAL_ADDRESS
        for i, value in enumerate(values):
            cells[address + i] = int(value)
        return None
