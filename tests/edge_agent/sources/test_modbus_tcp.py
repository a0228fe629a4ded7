"""ModbusTcp against real pymodbus TCP servers on ephemeral ports: decoding, coalescing,
reconnecting, dead units and fault isolation between links."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from broker import free_port
from waiting import wait_for

from edge_agent.simulate.server import ModbusEndpoint, ServerLoop
from edge_agent.sources.config import ModbusTcpSource
from edge_agent.sources.modbus import next_due_after
from edge_agent.sources.modbus_tcp import ModbusTcp

HOST = "127.0.0.1"


class Sink:
    """Records every put with its wall time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, dict[str, float], float]] = []

    def put(self, source: str, readings: Mapping[str, float], t: float) -> None:
        with self.lock:
            self.calls.append((source, dict(readings), t))

    def put_row(self, source: str, t: float, readings: Mapping[str, float]) -> None:
        raise AssertionError("a Modbus source never puts whole rows")

    def of(self, source: str, channel: str | None = None) -> list[tuple[dict[str, float], float]]:
        with self.lock:
            return [
                (r, t)
                for s, r, t in self.calls
                if s == source and (channel is None or channel in r)
            ]


def tcp_cfg(name: str, port: int, devices: list[dict[str, Any]], **link: Any) -> ModbusTcpSource:
    return ModbusTcpSource.model_validate(
        {"type": "modbus_tcp", "name": name, "host": HOST, "port": port, "devices": devices, **link}
    )


@pytest.fixture
def loop() -> Iterator[ServerLoop]:
    server_loop = ServerLoop()
    yield server_loop
    server_loop.close()


@pytest.fixture
def run() -> Iterator[Callable[[Any], Any]]:
    """Registers servers and sources to stop after the test, whatever happens."""
    started: list[Any] = []

    def track(obj: Any) -> Any:
        started.append(obj)
        return obj

    yield track
    for obj in reversed(started):
        obj.stop()


def test_schedule_is_fixed_rate_and_skips_instead_of_bursting() -> None:
    assert next_due_after(10.0, 1.0, now=10.2) == 11.0  # on time: one period on, no drift
    assert next_due_after(10.0, 1.0, now=11.5) == 11.0  # late by less than a period: catch up
    assert next_due_after(10.0, 1.0, now=14.5) == 14.0  # far behind: skip the missed slots


# (type, order, registers on the wire, value); the table test covers every combination.
WIRE = [
    ("float32", "ABCD", [0x42F6, 0xE979], 123.456),
    ("float32", "DCBA", [0x79E9, 0xF642], 123.456),
    ("float32", "BADC", [0xF642, 0x79E9], 123.456),
    ("float32", "CDAB", [0xE979, 0x42F6], 123.456),
    ("float64", "CDAB", [0xBE77, 0x1A9F, 0xDD2F, 0x405E], 123.456),
    ("float64", "DCBA", [0x77BE, 0x9F1A, 0x2FDD, 0x5E40], 123.456),
    ("int32", "BADC", [0xFFFF, 0xFEFF], -2),
    ("uint32", "CDAB", [0xBEEF, 0xDEAD], 0xDEADBEEF),
    ("int16", "DCBA", [0xFEFF], -2),
    ("uint16", "ABCD", [0x1234], 0x1234),
]


def test_values_decode_for_each_type_and_order(loop: ServerLoop, run: Any) -> None:
    port = free_port()
    points, writes, expected = [], {}, {}
    address = 0
    for i, (type_, order, words, value) in enumerate(WIRE):
        ch = f"c{i}_{type_}_{order}"
        table = "input" if i % 2 else "holding"
        points.append(
            {"channel": ch, "table": table, "address": address, "type": type_, "order": order}
        )
        writes[(1, table, address)] = words
        expected[ch] = value
        address += len(words) + 1
    points += [
        {"channel": "scaled", "address": 200, "type": "int16", "scale": 0.1, "offset": -40},
        {"channel": "coil", "table": "coil", "address": 3, "type": "bool"},
        {"channel": "din", "table": "discrete", "address": 7, "type": "bool"},
    ]
    writes[(1, "holding", 200)] = [655]
    writes[(1, "coil", 3)] = [1]
    expected.update(scaled=25.5, coil=1.0, din=0.0)
    cfg = tcp_cfg(
        "plc", port, [{"name": "d", "unit_id": 1, "poll_period_s": 0.1, "points": points}]
    )
    server = run(ModbusEndpoint(cfg, loop))
    server.tables.write(writes)
    server.start()
    sink = Sink()
    source = run(ModbusTcp(cfg))
    source.start(sink)
    assert wait_for(lambda: bool(sink.of("plc")))
    readings, _ = sink.of("plc")[0]
    assert readings.keys() == expected.keys()
    for ch, value in expected.items():
        assert readings[ch] == pytest.approx(value, rel=1e-6), ch
    assert source.counters.poll_errors == 0


def test_coalescing_needs_one_request_per_table(loop: ServerLoop, run: Any) -> None:
    port = free_port()
    holding = [{"channel": f"h{a}", "address": a} for a in range(0, 40, 2)]  # 20 points, gaps of 1
    inputs = [{"channel": f"i{a}", "table": "input", "address": a} for a in range(10)]
    cfg = tcp_cfg(
        "plc",
        port,
        [{"name": "d", "poll_period_s": 0.05, "max_gap": 1, "points": holding + inputs}],
    )
    server = run(ModbusEndpoint(cfg, loop))
    requests: list[int] = []
    read = server.tables.async_getValues

    async def counting(device_id: int, func_code: int, address: int, count: int = 1) -> Any:
        requests.append(func_code)
        return await read(device_id, func_code, address, count)

    server.tables.async_getValues = counting  # type: ignore[method-assign]
    server.start()
    source = run(ModbusTcp(cfg))
    sink = Sink()
    source.start(sink)
    assert wait_for(lambda: len(sink.of("plc")) >= 5)
    source.stop()
    polls = source.device_status()["d"]["polls"]
    assert polls >= 5
    # 30 points, but only one read of holding and one of input registers per poll
    assert len(requests) == 2 * polls
    assert sorted(set(requests)) == [3, 4]
    assert source.counters.polls == len(requests)
    assert source.counters.samples == 30 * polls


def test_reconnects_after_the_server_restarts(
    loop: ServerLoop, run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.sources.modbus")
    port = free_port()
    dev = {"name": "d", "poll_period_s": 0.1, "points": [{"channel": "p", "address": 0}]}
    cfg = tcp_cfg("plc", port, [dev], timeout_s=0.2, backoff_initial_s=0.05, backoff_max_s=0.2)
    first = ModbusEndpoint(cfg, loop)
    first.tables.write({(1, "holding", 0): [11]})
    first.start()
    sink = Sink()
    source = run(ModbusTcp(cfg))
    source.start(sink)
    assert wait_for(lambda: any(r["p"] == 11 for r, _ in sink.of("plc")))

    first.stop()
    assert wait_for(lambda: any(math.isnan(r["p"]) for r, _ in sink.of("plc")))
    assert source.device_status()["d"]["ok"] is False
    time.sleep(0.5)  # several reconnect attempts, all refused

    second = run(ModbusEndpoint(cfg, loop))
    second.tables.write({(1, "holding", 0): [22]})
    second.start()
    assert wait_for(lambda: any(r["p"] == 22 for r, _ in sink.of("plc")))
    assert source.counters.reconnects == 1
    assert source.device_status()["d"]["ok"] is True
    values = [r["p"] for r, _ in sink.of("plc")]
    assert sum(math.isnan(v) for v in values) == 1  # NaN once for the whole outage
    down = [r for r in caplog.records if "link down" in r.getMessage()]
    up = [r for r in caplog.records if "up again" in r.getMessage()]
    assert len(down) == 1
    assert len(up) == 1


def test_dead_unit_backs_off_and_logs_once(
    loop: ServerLoop, run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.sources.modbus")
    port = free_port()
    point = [{"channel": "p", "address": 0}]
    cfg = tcp_cfg(
        "gw",
        port,
        [
            {"name": "alive", "unit_id": 1, "poll_period_s": 0.1, "points": point},
            {
                "name": "dead",
                "unit_id": 2,
                "poll_period_s": 0.1,
                "points": [{"channel": "q", "address": 0}],
            },
        ],
        timeout_s=0.05,
        retries=0,
        backoff_initial_s=0.1,
        backoff_max_s=0.2,
    )
    server = run(ModbusEndpoint(cfg, loop))
    server.tables.write({(1, "holding", 0): [5], (2, "holding", 0): [6]})
    server.tables.silent.add(2)
    server.start()
    sink = Sink()
    source = run(ModbusTcp(cfg))
    source.start(sink)
    assert wait_for(lambda: source.device_status()["dead"]["consecutive_failures"] >= 4)
    status = source.device_status()
    assert status["dead"]["ok"] is False
    assert status["alive"]["ok"] is True
    assert [r["q"] for r, _ in sink.of("gw", "q")] == [pytest.approx(math.nan, nan_ok=True)]
    assert source.counters.reconnects == 0  # a dead unit is not a broken link
    warnings = [r for r in caplog.records if "not answering" in r.getMessage()]
    assert len(warnings) == 1

    server.tables.silent.discard(2)  # the slave comes back
    assert wait_for(lambda: any(r["q"] == 6 for r, _ in sink.of("gw", "q")), 2.0)
    assert source.device_status()["dead"]["ok"] is True
    assert len([r for r in caplog.records if "answers again" in r.getMessage()]) == 1


def test_a_dead_server_does_not_slow_the_other_link(loop: ServerLoop, run: Any) -> None:
    period_s, window_s = 0.15, 5.0
    cfgs = []
    for name in ("a", "b"):
        dev = {
            "name": "d",
            "poll_period_s": period_s,
            "points": [{"channel": f"{name}1", "address": 0}],
        }
        cfgs.append(tcp_cfg(name, free_port(), [dev], timeout_s=0.3, backoff_initial_s=0.2))
    servers = [run(ModbusEndpoint(cfg, loop)) for cfg in cfgs]
    for server in servers:
        server.start()
    sink = Sink()
    sources = [run(ModbusTcp(cfg)) for cfg in cfgs]
    for source in sources:
        source.start(sink)
    assert wait_for(lambda: len(sink.of("a")) >= 3 and len(sink.of("b")) >= 3)

    servers[1].stop()
    start = time.time()
    time.sleep(window_s)
    in_window = [t for _, t in sink.of("a") if start <= t < start + window_s]
    expected = window_s / period_s
    assert abs(len(in_window) - expected) <= 0.1 * expected, (len(in_window), expected)
    b_after = [r for r, t in sink.of("b") if t >= start]
    assert len(b_after) == 1  # the NaN that marks b's channels, then silence
    assert math.isnan(b_after[0]["b1"])
    assert sources[1].counters.reconnects == 0
    assert sources[1].device_status()["d"]["ok"] is False
