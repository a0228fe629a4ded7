"""Register decoding/encoding for every type x byte order, and the read planner's limits."""

from __future__ import annotations

import math
import random
import struct

import pytest

from edge_agent.errors import ConfigError
from edge_agent.sources.config import MAX_BITS_PER_READ, MAX_REGISTERS_PER_READ, ModbusPoint
from edge_agent.sources.registers import decode, encode, plan_reads

# (type, order, value, registers as they arrive on the wire); float32 123.456 is 0x42F6E979,
# float64 123.456 is 0x405EDD2F1A9FBE77.
KNOWN = [
    ("float32", "ABCD", 123.456, [0x42F6, 0xE979]),
    ("float32", "DCBA", 123.456, [0x79E9, 0xF642]),
    ("float32", "BADC", 123.456, [0xF642, 0x79E9]),
    ("float32", "CDAB", 123.456, [0xE979, 0x42F6]),
    ("float64", "ABCD", 123.456, [0x405E, 0xDD2F, 0x1A9F, 0xBE77]),
    ("float64", "DCBA", 123.456, [0x77BE, 0x9F1A, 0x2FDD, 0x5E40]),
    ("float64", "BADC", 123.456, [0x5E40, 0x2FDD, 0x9F1A, 0x77BE]),
    ("float64", "CDAB", 123.456, [0xBE77, 0x1A9F, 0xDD2F, 0x405E]),
    ("int32", "ABCD", 0x12345678, [0x1234, 0x5678]),
    ("int32", "DCBA", 0x12345678, [0x7856, 0x3412]),
    ("int32", "BADC", 0x12345678, [0x3412, 0x7856]),
    ("int32", "CDAB", 0x12345678, [0x5678, 0x1234]),
    ("int32", "ABCD", -2, [0xFFFF, 0xFFFE]),
    ("int32", "DCBA", -2, [0xFEFF, 0xFFFF]),
    ("int32", "BADC", -2, [0xFFFF, 0xFEFF]),
    ("int32", "CDAB", -2, [0xFFFE, 0xFFFF]),
    ("uint32", "ABCD", 0xDEADBEEF, [0xDEAD, 0xBEEF]),
    ("uint32", "DCBA", 0xDEADBEEF, [0xEFBE, 0xADDE]),
    ("uint32", "BADC", 0xDEADBEEF, [0xADDE, 0xEFBE]),
    ("uint32", "CDAB", 0xDEADBEEF, [0xBEEF, 0xDEAD]),
    ("int16", "ABCD", -2, [0xFFFE]),
    ("int16", "DCBA", -2, [0xFEFF]),
    ("int16", "BADC", -2, [0xFEFF]),
    ("int16", "CDAB", -2, [0xFFFE]),
    ("uint16", "ABCD", 0x1234, [0x1234]),
    ("uint16", "DCBA", 0x1234, [0x3412]),
    ("uint16", "BADC", 0x1234, [0x3412]),
    ("uint16", "CDAB", 0x1234, [0x1234]),
]
ORDERS = ("ABCD", "DCBA", "BADC", "CDAB")


def point(type_: str = "uint16", order: str = "ABCD", **kw: object) -> ModbusPoint:
    table = "coil" if type_ == "bool" else "holding"
    args: dict[str, object] = {"channel": "x", "table": table, "address": 0}
    args.update(kw)
    return ModbusPoint.model_validate({**args, "type": type_, "order": order})


def test_float_constants_are_what_the_table_says() -> None:
    assert struct.pack(">f", 123.456).hex() == "42f6e979"
    assert struct.pack(">d", 123.456).hex() == "405edd2f1a9fbe77"


@pytest.mark.parametrize(("type_", "order", "value", "words"), KNOWN)
def test_decode_known_patterns(type_: str, order: str, value: float, words: list[int]) -> None:
    got = decode(point(type_, order), words)
    if type_ == "float32":
        assert got == pytest.approx(value, rel=1e-7)
    else:
        assert got == value


@pytest.mark.parametrize(("type_", "order", "value", "words"), KNOWN)
def test_encode_known_patterns(type_: str, order: str, value: float, words: list[int]) -> None:
    assert encode(point(type_, order), value) == words


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", ["int16", "uint16", "int32", "uint32", "float32", "float64"])
def test_round_trip_with_scale_and_offset(type_: str, order: str) -> None:
    rng = random.Random(f"{type_}{order}")
    p = point(type_, order, scale=0.1, offset=-40.0)
    for _ in range(50):
        raw = rng.randint(0, 30000) if type_.startswith("u") else rng.randint(-30000, 30000)
        value = raw * 0.1 - 40.0
        back = decode(p, encode(p, value))
        # integers come back exactly; float32 within its 24-bit mantissa
        assert back == pytest.approx(value, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("order", ORDERS)
def test_bool_points(order: str) -> None:
    p = point("bool", order)
    assert decode(p, [1]) == 1.0
    assert decode(p, [0]) == 0.0
    assert encode(p, 0.7) == [1]
    assert encode(p, 0.2) == [0]


def test_scale_and_offset_apply_after_decoding() -> None:
    p = point("int16", scale=0.1, offset=-40.0)
    assert decode(p, [655]) == pytest.approx(25.5)
    assert encode(p, 25.5) == [655]
    assert encode(p, 25.54) == [655]  # rounded to the nearest raw count
    assert decode(point("int16", scale=0.1), [0xFFF6]) == pytest.approx(-1.0)


def test_integers_are_clipped_and_nan_refused() -> None:
    assert encode(point("uint16"), 1e9) == [0xFFFF]
    assert encode(point("uint16"), -5) == [0]
    assert encode(point("int16"), -1e9) == [0x8000]
    assert encode(point("int32"), math.inf) == [0x7FFF, 0xFFFF]
    assert encode(point("uint32", "CDAB"), 2**40) == [0xFFFF, 0xFFFF]
    with pytest.raises(ValueError, match="NaN"):
        encode(point("int32"), math.nan)
    with pytest.raises(ValueError, match="NaN"):
        encode(point("bool"), math.nan)


def test_floats_carry_nan_and_overflow_to_infinity() -> None:
    assert math.isnan(decode(point("float32"), encode(point("float32"), math.nan)))
    assert encode(point("float32"), 1e39) == [0x7F80, 0x0000]
    assert decode(point("float64", "DCBA"), encode(point("float64", "DCBA"), 1e300)) == 1e300


def test_zero_scale_cannot_be_encoded() -> None:
    with pytest.raises(ConfigError, match="scale 0"):
        encode(point("uint16", scale=0.0), 1.0)


def test_decode_needs_all_registers() -> None:
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode(point("float32"), [0x42F6])


# --- planner -----------------------------------------------------------------------------


def pts(*specs: tuple[int, str], table: str = "holding") -> list[ModbusPoint]:
    return [
        ModbusPoint(channel=f"{table}{a}{t}", table=table, address=a, type=t)  # type: ignore[arg-type]
        for a, t in specs
    ]


def check_plans_cover(points: list[ModbusPoint], max_gap: int = 0) -> list[tuple[int, int]]:
    plans = plan_reads(points, max_gap=max_gap)
    seen = []
    for plan in plans:
        limit = MAX_BITS_PER_READ if plan.table in ("coil", "discrete") else MAX_REGISTERS_PER_READ
        assert 1 <= plan.count <= limit
        for p, offset in plan.points:
            assert p.table == plan.table
            assert offset == p.address - plan.address
            assert offset >= 0
            assert offset + p.width <= plan.count
            seen.append(p.channel)
    assert sorted(seen) == sorted(p.channel for p in points)
    return [(p.address, p.count) for p in plans]


def test_adjacent_points_share_one_read() -> None:
    five = pts(*[(2 * i, "float32") for i in range(5)])
    assert check_plans_cover(list(reversed(five))) == [(0, 10)]


@pytest.mark.parametrize(
    ("max_gap", "expected"),
    [(0, [(0, 1), (5, 2)]), (3, [(0, 1), (5, 2)]), (4, [(0, 7)]), (10, [(0, 7)])],
)
def test_gaps_up_to_max_gap_are_read_through(max_gap: int, expected: list[tuple[int, int]]) -> None:
    # uint16 at 0 (ends at 1), int32 at 5: four unused registers 1..4 between them
    assert check_plans_cover(pts((0, "uint16"), (5, "int32")), max_gap=max_gap) == expected


def test_exactly_125_registers_fit_in_one_read() -> None:
    floats = pts(*[(2 * i, "float32") for i in range(62)])  # registers 0..123
    assert check_plans_cover([*floats, *pts((124, "uint16"))]) == [(0, 125)]


def test_the_126th_register_starts_a_new_read() -> None:
    floats = pts(*[(2 * i, "float32") for i in range(62)])
    assert check_plans_cover([*floats, *pts((124, "uint16"), (125, "uint16"))]) == [
        (0, 125),
        (125, 1),
    ]
    # a float32 straddling register 125 moves whole to the next read
    assert check_plans_cover([*floats, *pts((124, "float32"))]) == [(0, 124), (124, 2)]


def test_gap_never_stretches_a_read_past_125() -> None:
    got = check_plans_cover(pts((0, "uint16"), (120, "float64")), max_gap=125)
    assert got == [(0, 124)]
    got = check_plans_cover(pts((0, "uint16"), (122, "float64")), max_gap=125)
    assert got == [(0, 1), (122, 4)]


def test_bits_are_planned_up_to_2000_per_read() -> None:
    coils = pts(*[(a, "bool") for a in range(MAX_BITS_PER_READ + 1)], table="coil")
    assert check_plans_cover(coils) == [(0, 2000), (2000, 1)]


def test_tables_are_never_mixed_and_overlaps_share_a_read() -> None:
    mixed = [
        *pts((0, "uint16"), (1, "uint16")),
        *pts((2, "uint16"), table="input"),
        *pts((3, "bool"), table="discrete"),
        *pts((0, "int32"), (0, "float32")),  # the same registers read two ways
    ]
    plans = plan_reads(mixed)
    assert sorted((p.table, p.address, p.count) for p in plans) == [
        ("discrete", 3, 1),
        ("holding", 0, 2),
        ("input", 2, 1),
    ]
    check_plans_cover(mixed)
