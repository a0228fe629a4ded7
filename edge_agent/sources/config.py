"""Config models of the sensor sources, picked by ``type`` (a discriminated union).

Sits at the very start of the pipeline: each source polls or reads one link (a Modbus TCP
connection, an RS-485 bus, a serial line, a recorded file) and delivers channel readings.
Every field says its unit; unknown keys are rejected so a misspelt setting never passes
silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from edge_agent.config.strict import StrictModel

# The Modbus application protocol caps a read of registers at 125 (and of bits at 2000).
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000



RegisterKind = Literal["holding", "input", "coil", "discrete"]
ValueType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32", "float64"]
WordOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]

REGISTERS_PER_TYPE: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "float64": 4,
}


class ModbusPoint(StrictModel):
    """One channel read from a Modbus device: value = raw * scale + offset."""

    channel: str = Field(min_length=1, description="Model channel this point feeds")
    table: RegisterKind = Field(
        default="holding", description="Table: holding/input registers, coils, discrete inputs"
    )
    address: int = Field(ge=0, le=65535, description="Zero-based address (PDU address)")
    type: ValueType = Field(default="uint16", description="Encoding of the raw value")
    order: WordOrder = Field(
        default="ABCD",
        description="Byte order of multi-byte values: ABCD big-endian, DCBA little-endian, "
        "BADC bytes swapped in each word, CDAB words swapped",
    )
    scale: float = Field(default=1.0, description="Multiplier applied to the raw value")
    offset: float = Field(default=0.0, description="Added after scaling, in engineering units")

    @model_validator(mode="after")
    def _bits_are_bool(self) -> ModbusPoint:
        is_bit = self.table in ("coil", "discrete")
        if is_bit != (self.type == "bool"):
            raise ValueError(
                f"table {self.table!r} with type {self.type!r}: coils and discrete inputs "
                "are type 'bool'; holding and input registers are numeric types"
            )
        if self.address + REGISTERS_PER_TYPE[self.type] - 1 > 65535:
            raise ValueError(f"a {self.type} at address {self.address} runs past 65535")
        return self

    @property
    def width(self) -> int:
        """Registers (or bits) this point occupies."""
        return REGISTERS_PER_TYPE[self.type]


class ModbusDevice(StrictModel):
    """One slave (unit) on a Modbus link, polled on its own period."""

    name: str = Field(min_length=1, description="Device name, used in logs and metrics")
    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus unit (slave) id")
    poll_period_s: float = Field(default=1.0, gt=0, description="Seconds between polls")
    points: list[ModbusPoint] = Field(min_length=1, description="Channels read from this device")
    max_gap: int = Field(
        default=0,
        ge=0,
        le=MAX_REGISTERS_PER_READ,
        description="Unused registers allowed between two points read in one request",
    )


class _ModbusLink(StrictModel):
    timeout_s: float = Field(default=0.5, gt=0, le=30, description="Per-request timeout in s")
    retries: int = Field(default=1, ge=0, le=10, description="Retries of a failed request")
    backoff_initial_s: float = Field(
        default=1.0, gt=0, description="First wait before reconnecting a failed link or device"
    )
    backoff_max_s: float = Field(default=60.0, gt=0, description="Cap of the reconnect backoff")
    devices: list[ModbusDevice] = Field(min_length=1, description="Devices on this link")

    @model_validator(mode="after")
    def _unique_devices(self) -> _ModbusLink:
        names = [d.name for d in self.devices]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"device names must be unique on a link; repeated: {dup}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self


class ModbusTcpSource(_ModbusLink):
    """A Modbus TCP server (a PLC, or a TCP gateway with several units behind it)."""

    type: Literal["modbus_tcp"]
    name: str = Field(min_length=1, description="Source name, used in logs and metrics")
    host: str = Field(min_length=1, description="Host name or IP address")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port")


Parity = Literal["N", "E", "O"]


class _SerialFraming(StrictModel):
    port: str = Field(min_length=1, description="Serial device, e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=9600, gt=0, description="Bits per second")
    bytesize: Literal[7, 8] = Field(default=8, description="Data bits")
    parity: Parity = Field(default="N", description="N none, E even, O odd")
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits")


class ModbusRtuSource(_ModbusLink, _SerialFraming):
    """An RS-485 bus with one or more Modbus RTU devices, polled one request at a time."""

    type: Literal["modbus_rtu"]
    name: str = Field(min_length=1, description="Source name, used in logs and metrics")


class SerialLineSource(_SerialFraming):
    """Line-oriented text from a microcontroller: ``v1,v2,...`` (csv) or ``key=value ...`` (kv)."""

    type: Literal["serial_line"]
    name: str = Field(min_length=1, description="Source name, used in logs and metrics")
    format: Literal["csv", "kv"] = Field(default="csv", description="Line format")
    columns: list[str] = Field(
        default_factory=list,
        description="csv: channel of each field, in order ('' skips a field); kv: keys to use",
    )
    delimiter: str = Field(default=",", min_length=1, max_length=1, description="csv separator")
    max_line_bytes: int = Field(default=1024, ge=16, description="Longer lines are malformed")
    reopen_s: float = Field(default=2.0, gt=0, description="Wait before reopening a lost port")

    @model_validator(mode="after")
    def _csv_needs_columns(self) -> SerialLineSource:
        if self.format == "csv" and not any(self.columns):
            raise ValueError("format 'csv' needs 'columns': the channel of each field")
        return self


class ReplaySource(StrictModel):
    """Rows of a recorded CSV, fed with their own timestamps (bench, soak and parity tests)."""

    type: Literal["replay"]
    name: str = Field(default="replay", min_length=1, description="Source name")
    path: Path = Field(description="CSV with a timestamp column and the model's channels")
    time_col: str | None = Field(default=None, description="Timestamp column (default: detect)")
    speed: float = Field(
        default=0.0, ge=0, description="Times real time; 0 feeds rows as fast as they are scored"
    )
    loop: bool = Field(default=False, description="Start over at the end of the file")


SourceConfig = Annotated[
    ModbusTcpSource | ModbusRtuSource | SerialLineSource | ReplaySource,
    Field(discriminator="type"),
]


def source_channels(source: SourceConfig) -> list[str]:
    """Channels a source delivers, in config order."""
    if isinstance(source, ModbusTcpSource | ModbusRtuSource):
        return [p.channel for d in source.devices for p in d.points]
    if isinstance(source, SerialLineSource):
        return [c for c in source.columns if c]
    return []
