"""Register values and read plans: how Modbus points become requests and numbers.

Sits between the Modbus sources (``modbus.py``) and the wire. :func:`decode` turns the 16-bit
registers (or the bit) of one point into an engineering value, :func:`encode` is its inverse
(the ``simulate`` server uses it), and :func:`plan_reads` coalesces a device's points into as
few requests as the protocol allows, because on a shared RS-485 bus every request costs bus
time. Pure functions, no I/O.

Byte orders name the bytes of a value from most to least significant, as they arrive on the
wire: ``ABCD`` big-endian (the Modbus default), ``DCBA`` little-endian, ``BADC`` bytes swapped
within each register, ``CDAB`` registers in reverse order (little-endian word order, as many
PLCs store 32- and 64-bit values). For 64-bit values the same rules extend to four registers.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.errors import ConfigError
from edge_agent.sources.config import (
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    REGISTERS_PER_TYPE,
    ModbusPoint,
    RegisterKind,
)

BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete"})
REGISTER_BYTES = 2
# struct format of each numeric type, big-endian once the byte order is undone
_STRUCT_FORMAT = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "float32": "f",
    "float64": "d",
}
_INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
FLOAT32_MAX = 3.4028234663852886e38


def _reorder(data: bytes, order: str) -> bytes:
    """Wire bytes <-> big-endian bytes. Every order is its own inverse, so one function
    serves both directions."""
    if order == "ABCD":
        return data
    if order == "DCBA":
        return data[::-1]
    words = [data[i : i + REGISTER_BYTES] for i in range(0, len(data), REGISTER_BYTES)]
    if order == "BADC":
        return b"".join(w[::-1] for w in words)
    if order == "CDAB":
        return b"".join(reversed(words))
    raise ConfigError(f"unknown byte order {order!r}; expected ABCD, DCBA, BADC or CDAB")


def decode_raw(point: ModbusPoint, words: Sequence[int]) -> float:
    """The raw number (before scale and offset) in ``words``: registers, or bits for coils
    and discrete inputs, starting at the point's own address."""
    width = REGISTERS_PER_TYPE[point.type]
    if len(words) < width:
        raise ValueError(f"{point.channel}: {point.type} needs {width} registers, got {len(words)}")
    if point.type == "bool":
        return 1.0 if words[0] else 0.0
    wire = struct.pack(f">{width}H", *(w & 0xFFFF for w in words[:width]))
    (raw,) = struct.unpack(">" + _STRUCT_FORMAT[point.type], _reorder(wire, point.order))
    return float(raw)


def decode(point: ModbusPoint, words: Sequence[int]) -> float:
    """Engineering value of ``point``: ``raw * scale + offset``, in float arithmetic, so any
    register content gives a float and never an exception: infinities and NaNs pass through,
    and a product too large for a float is infinite (data quality judges plausibility)."""
    value = decode_raw(point, words) * point.scale
    # Without an offset the value is exactly the scaled raw one (adding 0.0 would turn -0.0
    # into 0.0).
    return value + point.offset if point.offset else value


def encode(point: ModbusPoint, value: float) -> list[int]:
    """Registers (or one 0/1 bit) that :func:`decode` reads back as ``value``.

    Integers are rounded and clipped to their type's range; a float32 too large becomes
    infinity. NaN has no integer encoding: ``ValueError``.
    """
    if point.scale == 0:
        raise ConfigError(f"point {point.channel!r}: scale 0 cannot be inverted to encode a value")
    raw = (value - point.offset) / point.scale
    if point.type == "bool":
        if math.isnan(raw):
            raise ValueError(f"{point.channel}: NaN cannot be written to a bit")
        return [1 if raw >= 0.5 else 0]
    fmt = ">" + _STRUCT_FORMAT[point.type]
    if point.type in _INT_RANGE:
        if math.isnan(raw):
            raise ValueError(f"{point.channel}: NaN cannot be written to a {point.type}")
        lo, hi = _INT_RANGE[point.type]
        whole = min(max(round(raw), lo), hi) if math.isfinite(raw) else (hi if raw > 0 else lo)
        big_endian = struct.pack(fmt, whole)
    else:
        if point.type == "float32" and math.isfinite(raw) and abs(raw) > FLOAT32_MAX:
            raw = math.copysign(math.inf, raw)
        big_endian = struct.pack(fmt, raw)
    wire = _reorder(big_endian, point.order)
    return list(struct.unpack(f">{len(wire) // REGISTER_BYTES}H", wire))


@dataclass(frozen=True)
class ReadPlan:
    """One read request: ``count`` registers (or bits) of ``table`` from ``address``;
    ``points`` pairs each point with its offset in the response."""

    table: RegisterKind
    address: int
    count: int
    points: tuple[tuple[ModbusPoint, int], ...]


def plan_reads(
    points: Sequence[ModbusPoint],
    *,
    max_gap: int = 0,
    max_registers: int = MAX_REGISTERS_PER_READ,
    max_bits: int = MAX_BITS_PER_READ,
) -> list[ReadPlan]:
    """Fewest reads covering ``points``: same-table points whose addresses are at most
    ``max_gap`` unused addresses apart share a request, up to the protocol's size limit.

    Greedy from the lowest address is optimal here: extending the current read as far as
    possible never leaves a later point worse off.
    """
    plans: list[ReadPlan] = []
    tables: dict[str, list[ModbusPoint]] = {}
    for p in points:
        tables.setdefault(p.table, []).append(p)
    for table, members in tables.items():
        limit = max_bits if table in BIT_TABLES else max_registers
        members.sort(key=lambda p: (p.address, -p.width))
        group: list[ModbusPoint] = []
        start = end = 0
        for p in members:
            new_end = max(end, p.address + p.width)
            if group and p.address - end <= max_gap and new_end - start <= limit:
                group.append(p)
                end = new_end
                continue
            if group:
                plans.append(_plan(start, end, group))
            group, start, end = [p], p.address, p.address + p.width
        if group:
            plans.append(_plan(start, end, group))
    return plans


def _plan(start: int, end: int, group: list[ModbusPoint]) -> ReadPlan:
    return ReadPlan(
        table=group[0].table,
        address=start,
        count=end - start,
        points=tuple((p, p.address - start) for p in group),
    )
