"""Extreme register contents: every point type fed the values at the edges of its encoding.

A PLC that stores an uninitialised float (NaN, infinity), a counter at its limit, or a scaled
integer whose product leaves the float32 range must still decode to the float the registers
mean, without an exception: data quality (not the source) turns implausible values into a
``range`` sensor fault. First :func:`decode` alone, then the same registers through a real
pymodbus TCP server to the sink, with the source polling on afterwards.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from broker import free_port
from test_modbus_tcp import Sink, loop, tcp_cfg  # noqa: F401 (loop: a fixture)
from waiting import wait_for

from edge_agent.simulate.server import ModbusEndpoint, ServerLoop
from edge_agent.sources.config import ModbusPoint
from edge_agent.sources.modbus_tcp import ModbusTcp
from edge_agent.sources.registers import decode

FLT_MAX = 3.4028234663852886e38  # the largest finite float32, exactly
FLT_TRUE_MIN = 1.401298464324817e-45  # the smallest float32 subnormal, exactly
DBL_MAX = 1.7976931348623157e308
INT32_MIN, INT32_MAX, UINT32_MAX = -(2**31), 2**31 - 1, 2**32 - 1
BIG_SCALE = 1e30  # a scale that takes 32-bit counts past the float32 range


def words(fmt: str, value: float) -> list[int]:
    """The big-endian (ABCD) registers of ``value`` packed as struct format ``fmt``."""
    raw = struct.pack(">" + fmt, value)
    return list(struct.unpack(f">{len(raw) // 2}H", raw))


# (name, point settings, registers as they arrive, the exact value they mean)
EXTREMES: list[tuple[str, dict[str, Any], list[int], float]] = [
    ("f32_max", {"type": "float32"}, [0x7F7F, 0xFFFF], FLT_MAX),
    ("f32_min", {"type": "float32"}, [0xFF7F, 0xFFFF], -FLT_MAX),
    ("f32_inf", {"type": "float32"}, [0x7F80, 0x0000], math.inf),
    ("f32_neg_inf", {"type": "float32"}, [0xFF80, 0x0000], -math.inf),
    ("f32_qnan", {"type": "float32"}, [0x7FC0, 0x0000], math.nan),
    ("f32_snan", {"type": "float32"}, [0x7F80, 0x0001], math.nan),
    ("f32_neg_nan", {"type": "float32"}, [0xFFFF, 0xFFFF], math.nan),
    ("f32_subnormal", {"type": "float32"}, [0x0000, 0x0001], FLT_TRUE_MIN),
    ("f32_neg_zero", {"type": "float32"}, [0x8000, 0x0000], -0.0),
    ("f32_max_cdab", {"type": "float32", "order": "CDAB"}, [0xFFFF, 0x7F7F], FLT_MAX),
    ("f32_max_scaled", {"type": "float32", "scale": 10.0}, [0x7F7F, 0xFFFF], FLT_MAX * 10.0),
    ("f64_1e39", {"type": "float64"}, words("d", 1e39), 1e39),
    ("f64_neg_1e39", {"type": "float64"}, words("d", -1e39), -1e39),
    ("f64_max", {"type": "float64"}, [0x7FEF, 0xFFFF, 0xFFFF, 0xFFFF], DBL_MAX),
    ("f64_inf", {"type": "float64"}, [0x7FF0, 0, 0, 0], math.inf),
    ("f64_nan", {"type": "float64"}, [0x7FF8, 0, 0, 0], math.nan),
    ("f64_snan", {"type": "float64"}, [0x7FF0, 0, 0, 1], math.nan),
    ("f64_subnormal", {"type": "float64"}, words("d", 1e-320), 1e-320),
    ("f64_true_min", {"type": "float64"}, [0, 0, 0, 1], 5e-324),
    ("f64_overflow", {"type": "float64", "scale": 10.0}, words("d", DBL_MAX), math.inf),
    ("f64_inf_offset", {"type": "float64", "offset": -40.0}, [0xFFF0, 0, 0, 0], -math.inf),
    ("i32_min_scaled", {"type": "int32", "scale": BIG_SCALE}, [0x8000, 0], INT32_MIN * BIG_SCALE),
    ("i32_max_scaled", {"type": "int32", "scale": BIG_SCALE}, [0x7FFF, 0xFFFF],
     INT32_MAX * BIG_SCALE),
    ("u32_max_scaled", {"type": "uint32", "scale": BIG_SCALE}, [0xFFFF, 0xFFFF],
     UINT32_MAX * BIG_SCALE),
    ("u32_max_dcba", {"type": "uint32", "order": "DCBA"}, [0xFFFF, 0xFFFF], float(UINT32_MAX)),
    ("i32_min_offset", {"type": "int32", "scale": 0.001, "offset": -1e9}, [0x8000, 0],
     INT32_MIN * 0.001 - 1e9),
    ("i16_min_scaled", {"type": "int16", "scale": BIG_SCALE}, [0x8000], -32768 * BIG_SCALE),
    ("i16_overflow", {"type": "int16", "scale": 1e305}, [0x7FFF], math.inf),
    ("u16_max_scaled", {"type": "uint16", "scale": -BIG_SCALE}, [0xFFFF], -65535 * BIG_SCALE),
    ("u16_max_tiny", {"type": "uint16", "scale": 1e-320}, [0xFFFF], 65535 * 1e-320),
]


def same_float(got: float, want: float) -> bool:
    """Bit for bit, except that every NaN is the same NaN (a float32 signalling NaN becomes
    a quiet one as a double; the payload carries nothing a sensor meant)."""
    if math.isnan(want):
        return math.isnan(got)
    return struct.pack(">d", got) == struct.pack(">d", want)


def test_the_table_means_what_it_says() -> None:
    assert struct.pack(">f", FLT_MAX).hex() == "7f7fffff"
    assert struct.pack(">f", FLT_TRUE_MIN).hex() == "00000001"
    assert struct.pack(">d", DBL_MAX).hex() == "7fefffffffffffff"
    assert math.isinf(32767 * 1e305)  # the i16_overflow product leaves the float64 range


@pytest.mark.parametrize(
    ("settings", "registers", "want"),
    [pytest.param(s, w, v, id=name) for name, s, w, v in EXTREMES],
)
def test_decode_gives_the_exact_float(
    settings: dict[str, Any], registers: list[int], want: float
) -> None:
    point = ModbusPoint.model_validate({"channel": "x", "address": 0, **settings})
    got = decode(point, registers)
    assert isinstance(got, float)
    assert same_float(got, want), (got, want)


def last(sink: Sink) -> dict[str, float]:
    """The latest readings the sink received ({} before the first)."""
    got = sink.of("plc")
    return got[-1][0] if got else {}


def test_extreme_registers_reach_the_sink_unchanged(loop: ServerLoop) -> None:  # noqa: F811
    points: list[dict[str, Any]] = []
    writes: dict[Any, list[int]] = {}
    wants: dict[str, float] = {}
    address = 0
    for name, settings, registers, want in EXTREMES:
        points.append({"channel": name, "address": address, **settings})
        writes[(1, "holding", address)] = registers
        wants[name] = want
        address += len(registers)
    points.append({"channel": "plain", "address": address})  # an ordinary value alongside
    writes[(1, "holding", address)] = [7]
    device = {"name": "d", "poll_period_s": 0.05, "points": points}
    cfg = tcp_cfg("plc", free_port(), [device])
    server = ModbusEndpoint(cfg, loop)
    server.tables.write(writes)
    server.start()
    source, sink = ModbusTcp(cfg), Sink()
    try:
        source.start(sink)
        assert wait_for(lambda: len(sink.of("plc")) >= 3)
        row = last(sink)
        wrong = {ch: (row.get(ch), want) for ch, want in wants.items()
                 if not same_float(row.get(ch, 0.0), want)}
        assert not wrong
        # The source polls on: an ordinary value written now arrives.
        loop.loop.call_soon_threadsafe(server.tables.write, {(1, "holding", address): [8]})
        assert wait_for(lambda: last(sink).get("plain") == 8.0)
        assert source.counters.poll_errors == 0
        assert source.counters.malformed == 0
        assert source.health.status()["crashes"] == 0
        assert source.running
    finally:
        source.stop()
        server.stop()
