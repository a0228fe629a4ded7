"""ModbusRtu over a real RS-485 stand-in: a socat pty pair with a pymodbus RTU server on the
far end. Two units on one bus, and a silent unit that must not steal the other's bus time."""

from __future__ import annotations

import math
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from edge_agent.simulate.ptys import PtyPair
from edge_agent.simulate.server import ModbusEndpoint, ServerLoop
from edge_agent.sources.config import ModbusRtuSource
from edge_agent.sources.modbus_rtu import ModbusRtu

pytestmark = pytest.mark.skipif(
    shutil.which("socat") is None, reason="socat is not installed: it plays the RS-485 bus"
)
BAUD = 115200


class Sink:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[dict[str, float], float]] = []

    def put(self, source: str, readings: Mapping[str, float], t: float) -> None:
        with self.lock:
            self.calls.append((dict(readings), t))

    def put_row(self, source: str, t: float, readings: Mapping[str, float]) -> None:
        raise AssertionError("a Modbus source never puts whole rows")

    def of(self, channel: str) -> list[tuple[float, float]]:
        with self.lock:
            return [(r[channel], t) for r, t in self.calls if channel in r]


def rtu_cfg(port: Path, devices: list[dict[str, Any]], **link: Any) -> ModbusRtuSource:
    return ModbusRtuSource.model_validate(
        {
            "type": "modbus_rtu",
            "name": "bus",
            "port": str(port),
            "baudrate": BAUD,
            "devices": devices,
            **link,
        }
    )


def device(name: str, unit: int, channel: str, period_s: float = 0.2) -> dict[str, Any]:
    point = {"channel": channel, "address": 10, "type": "float32", "order": "CDAB"}
    return {"name": name, "unit_id": unit, "poll_period_s": period_s, "points": [point]}


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[tuple[Path, ServerLoop, list[Any]]]:
    """A pty pair (agent end at tmp_path/ttyRS485) and a server loop; whatever the test
    appends to the list is stopped afterwards, then socat, and the links must be gone."""
    port = tmp_path / "ttyRS485"
    pty = PtyPair(str(port), source_index=0, source_name="bus")
    pty.start()
    loop = ServerLoop()
    started: list[Any] = []
    try:
        yield port, loop, started
    finally:
        for obj in reversed(started):
            obj.stop()
        loop.close()
        pty.stop()
    assert not port.is_symlink()
    assert not Path(f"{port}.sim").is_symlink()


def serve(port: Path, loop: ServerLoop, started: list[Any], units: dict[int, float]) -> None:
    """An RTU server on the bus answering for ``units`` (unit -> value of its point)."""
    cfg = rtu_cfg(port, [device(f"u{u}", u, f"ch{u}") for u in units])
    server = ModbusEndpoint(cfg, loop)
    server.tables.write(server.encode_row({f"ch{u}": value for u, value in units.items()}))
    server.start(f"{port}.sim")
    started.append(server)


def test_reads_two_units_on_one_bus(bus: tuple[Path, ServerLoop, list[Any]]) -> None:
    port, loop, started = bus
    serve(port, loop, started, {1: 12.5, 2: -3.25})
    source = ModbusRtu(rtu_cfg(port, [device("a", 1, "ch1"), device("b", 2, "ch2")]))
    started.append(source)
    sink = Sink()
    source.start(sink)
    assert wait_for(lambda: len(sink.of("ch1")) >= 2 and len(sink.of("ch2")) >= 2)
    assert {v for v, _ in sink.of("ch1")} == {12.5}
    assert {v for v, _ in sink.of("ch2")} == {-3.25}
    assert source.counters.poll_errors == 0
    assert all(s["ok"] for s in source.device_status().values())


def test_a_silent_unit_does_not_steal_bus_time(bus: tuple[Path, ServerLoop, list[Any]]) -> None:
    port, loop, started = bus
    serve(port, loop, started, {1: 7.0})  # nothing answers for unit 5
    period_s, window_s = 0.2, 5.0
    # Every poll of unit 5 holds the bus for 2 x 0.25 s (a try and a retry), more than two of
    # unit 1's periods: polled on its own schedule it would cost unit 1 a third of its polls.
    cfg = rtu_cfg(
        port,
        [device("live", 1, "ch1", period_s), device("dead", 5, "ch5", period_s)],
        timeout_s=0.25,
        retries=1,
        backoff_initial_s=2.0,
        backoff_max_s=4.0,
    )
    source = ModbusRtu(cfg)
    started.append(source)
    sink = Sink()
    began = time.monotonic()
    source.start(sink)
    assert wait_for(lambda: len(sink.of("ch1")) >= 3)
    expected = window_s / period_s
    counts = []
    # A pty write that socat does not drain within the timeout (a loaded CI host) is a link
    # fault, and its reconnect backoff costs unit 1 polls for reasons this test is not about:
    # such a window is measured again, and only a window the link stayed up through counts.
    for _ in range(3):
        reconnects = source.counters.reconnects
        start = time.time()
        time.sleep(window_s)
        assert wait_for(lambda: source.device_status()["live"]["ok"], timeout_s=10)
        live = [t for v, t in sink.of("ch1") if start <= t < start + window_s and v == 7.0]
        counts.append(len(live))
        if source.counters.reconnects == reconnects:
            break
    else:
        pytest.fail(f"the link dropped in every window: {counts} polls of unit 1")
    assert abs(counts[-1] - expected) <= 0.1 * expected, (counts, expected)

    dead = source.device_status()["dead"]
    assert dead["ok"] is False
    # still polled, at the backoff rate (and at once after a reconnect), so it is picked up
    # again when it returns; polled on its own period it would have been ~25 times a window
    elapsed = time.monotonic() - began
    assert 2 <= dead["polls"] <= 2 + elapsed / 2.0 + source.counters.reconnects, (dead, elapsed)
    assert dead["consecutive_failures"] == dead["polls"]
    assert [v for v, _ in sink.of("ch5")] == [pytest.approx(math.nan, nan_ok=True)]
    assert source.device_status()["live"]["ok"] is True
