"""``run_simulate`` end to end: the agent's own Modbus sources read back what it serves, from
the simulated plant or a CSV; serial lines; clean errors; nothing left behind."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from broker import free_port
from waiting import wait_for

from edge_agent.config.model import AgentConfig
from edge_agent.errors import ConfigError
from edge_agent.simulate import run_simulate
from edge_agent.simulate.rows import CHUNK_ROWS, ROW_PERIOD_S, WARMUP_FRACTION, RowFeed
from edge_agent.simulate.truth import TruthLog
from edge_agent.simulator.demo import DEMO_OPENING_CHANNEL, DemoStream
from edge_agent.simulator.faults import FaultEpisode
from edge_agent.simulator.plant import CHANNELS, PlantStream
from edge_agent.sources.modbus_rtu import ModbusRtu
from edge_agent.sources.modbus_tcp import ModbusTcp

needs_socat = pytest.mark.skipif(
    shutil.which("socat") is None, reason="socat is not installed: it makes the serial ptys"
)
HOST = "127.0.0.1"
SEED = 4


class Sink:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, dict[str, float], float]] = []

    def put(self, source: str, readings: Mapping[str, float], t: float) -> None:
        with self.lock:
            self.calls.append((source, dict(readings), t))

    def put_row(self, source: str, t: float, readings: Mapping[str, float]) -> None:
        raise AssertionError("a Modbus source never puts whole rows")

    def of(self, source: str) -> list[dict[str, float]]:
        return [r for r, _ in self.timed(source)]

    def timed(self, source: str) -> list[tuple[dict[str, float], float]]:
        """Readings of ``source`` with the wall time the source read them at."""
        with self.lock:
            return [(r, t) for s, r, t in self.calls if s == source]


def children() -> set[int]:
    pids: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids.update(int(p) for p in (task / "children").read_text().split())
        except FileNotFoundError:
            continue  # the thread ended while we looked
    return pids


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    threads, procs = set(threading.enumerate()), children()
    yield
    assert wait_for(lambda: not (set(threading.enumerate()) - threads), 3.0), (
        f"threads left behind: {set(threading.enumerate()) - threads}"
    )
    assert children() - procs == set(), "child processes (socat) left behind"


def config(*sources: dict[str, Any]) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "machine_id": "sim-test",
            "model": {"bundle": "/nonexistent/bundle", "trust_key": "/nonexistent/key.pem"},
            "sources": list(sources),
        }
    )


def tcp(port: int, points: list[dict[str, Any]]) -> dict[str, Any]:
    # One request per poll (max_gap): a poll split over two requests may straddle a row change.
    device = {"name": "plc", "poll_period_s": 0.05, "max_gap": 10, "points": points}
    return {"type": "modbus_tcp", "name": "tcp", "host": HOST, "port": port, "devices": [device]}


class Simulator:
    """run_simulate on a thread; stopped (and checked to have returned) at exit."""

    def __init__(self, cfg: AgentConfig, **kw: Any) -> None:
        self.stop = threading.Event()
        self.ready_calls = 0
        self.ready_at = 0.0  # wall time of the ready call
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(cfg,), kwargs=kw)

    def _ready(self) -> None:
        self.ready_calls += 1
        self.ready_at = time.time()

    def _run(self, cfg: AgentConfig, **kw: Any) -> None:
        try:
            run_simulate(cfg, stop=self.stop, ready=self._ready, **kw)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Simulator:
        self._thread.start()
        assert wait_for(lambda: self.ready_calls > 0 or self.error is not None, 10.0)
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(10.0)
        assert not self._thread.is_alive(), "run_simulate did not return after stop"
        assert self.error is None
        assert self.ready_calls == 1


def plant_stream() -> PlantStream:
    """The random plan run_simulate serves for SEED at the default fault fraction."""
    return PlantStream(
        chunk_rows=CHUNK_ROWS,
        warmup_fraction=WARMUP_FRACTION,
        anomaly_fraction=0.08,
        seed=SEED,
        period_s=ROW_PERIOD_S,
    )


def plant_rows(n: int) -> np.ndarray:
    stream = plant_stream()
    return np.array([stream.next_sample()[1] for _ in range(n)])


def row_of(readings: Mapping[str, float], rows: np.ndarray, tol: Mapping[str, float]) -> int:
    """Index of the one row all ``readings`` match within ``tol`` (relative for float32
    points, absolute for scaled integers); -1 if none."""
    for k, row in enumerate(rows):
        if all(
            math.isclose(v, row[CHANNELS.index(ch)], rel_tol=1e-6, abs_tol=tol.get(ch, 1e-9))
            for ch, v in readings.items()
        ):
            return k
    return -1


@needs_socat
def test_tcp_and_rtu_sources_read_back_the_simulated_plant(tmp_path: Path) -> None:
    port, tty = free_port(), tmp_path / "ttyRS485"
    float_pts = [
        {"channel": "pressure_bar", "address": 0, "type": "float32"},
        {"channel": "motor_current_a", "address": 2, "type": "float32", "order": "CDAB"},
        {"channel": "oil_temp_c", "address": 10, "type": "int16", "scale": 0.1},
    ]
    rtu_device = {
        "name": "meter",
        "unit_id": 3,
        "poll_period_s": 0.05,
        "max_gap": 2,
        "points": [
            {"channel": "flow_m3min", "type": "float32", "order": "DCBA", "address": 0},
            {"channel": "vibration_rms_mms", "address": 4, "type": "uint16", "scale": 0.01},
        ],
    }  # fmt: skip
    rtu = {"type": "modbus_rtu", "name": "rtu", "port": str(tty), "baudrate": 115200}
    cfg = config(tcp(port, float_pts), {**rtu, "devices": [rtu_device]})
    rows = plant_rows(40)
    tol = {"oil_temp_c": 0.05 + 1e-9, "vibration_rms_mms": 0.005 + 1e-9}
    sink = Sink()
    with Simulator(cfg, seed=SEED, speed=8.0):
        assert tty.is_symlink()
        sources = [ModbusTcp(cfg.sources[0]), ModbusRtu(cfg.sources[1])]  # type: ignore[arg-type]
        try:
            for source in sources:
                source.start(sink)
            assert wait_for(lambda: len({r["pressure_bar"] for r in sink.of("tcp")}) >= 3)
            assert wait_for(lambda: len({r["flow_m3min"] for r in sink.of("rtu")}) >= 3)
        finally:
            for source in sources:
                source.stop()
    assert not tty.is_symlink()
    assert not Path(f"{tty}.sim").is_symlink()
    for name in ("tcp", "rtu"):
        matched = [row_of(r, rows, tol) for r in sink.of(name)]
        assert -1 not in matched, f"{name} read values that are no row of the plant"
        assert matched == sorted(matched)  # rows advance, never go back
        assert len(set(matched)) >= 3


def test_csv_rows_are_served_and_loop(tmp_path: Path) -> None:
    data = tmp_path / "history.csv"
    data.write_text(
        "timestamp,a,b,anomaly\n"
        "2026-01-01T00:00:00Z,1.5,10,0\n"
        "2026-01-01T00:00:01Z,2.5,20,0\n"
        "2026-01-01T00:00:02Z,3.5,30,1\n"
    )
    points = [
        {"channel": "a", "address": 0, "type": "float32"},
        {"channel": "b", "address": 5, "type": "uint32", "order": "BADC"},
    ]
    cfg = config(tcp(free_port(), points))
    sink = Sink()
    with Simulator(cfg, data=data, speed=20.0):
        source = ModbusTcp(cfg.sources[0])  # type: ignore[arg-type]
        source.start(sink)
        try:
            assert wait_for(lambda: len({r["a"] for r in sink.of("tcp")}) == 3)

            def wrapped() -> bool:  # past the last row, back to the first
                seen = [r["a"] for r in sink.of("tcp")]
                return any(x == 3.5 and y == 1.5 for x, y in itertools.pairwise(seen))

            assert wait_for(wrapped)
        finally:
            source.stop()
    pairs = {(r["a"], r["b"]) for r in sink.of("tcp")}
    assert pairs == {(1.5, 10.0), (2.5, 20.0), (3.5, 30.0)}


@needs_socat
def test_serial_lines_follow_the_config(tmp_path: Path) -> None:
    csv_port, kv_port = tmp_path / "ttyCSV", tmp_path / "ttyKV"
    line = {"type": "serial_line", "baudrate": 115200}
    cfg = config(
        {**line, "name": "csv", "port": str(csv_port), "delimiter": ";",
         "columns": ["oil_temp_c", "", "pressure_bar"]},
        {**line, "name": "kv", "port": str(kv_port), "format": "kv", "columns": ["flow_m3min"]},
    )  # fmt: skip
    rows = plant_rows(40)
    with Simulator(cfg, seed=SEED, speed=20.0):
        texts = [_read_lines(p, 3) for p in (csv_port, kv_port)]
    csv_lines, kv_lines = texts
    for text in csv_lines:
        oil, skipped, pressure = text.split(";")
        assert skipped == ""
        got = {"oil_temp_c": float(oil), "pressure_bar": float(pressure)}
        assert row_of(got, rows, {"oil_temp_c": 1e-4, "pressure_bar": 1e-5}) >= 0, text
    for text in kv_lines:
        key, value = text.split("=")
        assert key == "flow_m3min"
        assert row_of({key: float(value)}, rows, {key: 1e-5}) >= 0, text


def _read_lines(port: Path, n: int, timeout_s: float = 5.0) -> list[str]:
    fd = os.open(port, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    buf = b""
    deadline = time.monotonic() + timeout_s
    try:
        while buf.count(b"\n") < n + 1 and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                buf += os.read(fd, 4096)
    finally:
        os.close(fd)
    # the first line may have been cut by opening the port mid-line
    lines = buf.decode("ascii").split("\n")[1:-1]
    assert len(lines) >= n, buf
    return lines


def test_a_channel_the_data_lacks_is_named(tmp_path: Path) -> None:
    cfg = config(tcp(free_port(), [{"channel": "bogus_temp", "address": 0}]))
    with pytest.raises(ConfigError, match=r"bogus_temp.*pressure_bar"):
        run_simulate(cfg, stop=threading.Event())
    data = tmp_path / "h.csv"
    data.write_text("timestamp,speed_rpm\n2026-01-01T00:00:00Z,1\n")
    with pytest.raises(ConfigError, match=r"bogus_temp.*speed_rpm"):
        run_simulate(cfg, data=data, stop=threading.Event())


@needs_socat
def test_an_unwritable_port_directory_suggests_set(tmp_path: Path) -> None:
    tty = tmp_path / "no-such-dir" / "ttyUSB0"
    point = [{"channel": "pressure_bar", "address": 0, "type": "float32"}]
    cfg = config(
        tcp(free_port(), point),
        {"type": "modbus_rtu", "name": "rtu", "port": str(tty),
         "devices": [{"name": "m", "points": [{"channel": "flow_m3min", "address": 0}]}]},
    )  # fmt: skip
    ready = threading.Event()
    with pytest.raises(ConfigError, match=r"not writable.*--set sources\.1\.port="):
        run_simulate(cfg, stop=threading.Event(), ready=ready.set)
    assert not ready.is_set()


# --- --demo and --truth ----------------------------------------------------------------------

DEMO_SPEED = 50.0  # rows per second: the demo's first episode (rows 45 to 134) in 2.7 s


def read_truth(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def check_pairs(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every start line (end null) is followed at once by its end line: same kind, channel and
    start, end not before start. Returns the end lines."""
    assert len(lines) % 2 == 0, lines
    for opened, closed in zip(lines[::2], lines[1::2], strict=True):
        assert set(opened) == {"kind", "channel", "start", "end"}
        assert opened["end"] is None
        assert {**closed, "end": None} == opened
        assert closed["end"] >= closed["start"]
    return lines[1::2]


def test_demo_serves_its_schedule_and_the_truth_follows_it_live(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    points = [{"channel": ch, "address": 2 * i, "type": "float32"} for i, ch in enumerate(CHANNELS)]
    cfg = config(tcp(free_port(), points))
    stream = DemoStream(seed=SEED)
    rows = np.array([stream.next_sample()[1] for _ in range(300)])
    first = stream.plant.episodes[0]
    sink = Sink()
    with Simulator(cfg, seed=SEED, speed=DEMO_SPEED, demo=True, truth=truth) as sim:
        source = ModbusTcp(cfg.sources[0])  # type: ignore[arg-type]
        source.start(sink)
        try:
            # Flushed as it happens: both lines are there while the simulator still runs.
            assert wait_for(lambda: len(read_truth(truth)) >= 2, 10.0)
        finally:
            source.stop()
    lines = read_truth(truth)
    opened, closed = lines[:2]
    check_pairs(lines)
    assert (opened["kind"], opened["channel"]) == ("level_shift", DEMO_OPENING_CHANNEL)
    period = 1.0 / DEMO_SPEED
    # Rows are never early: the first faulty row comes 45 rows after serving began, the last
    # one 89 rows after the first (a late row only adds time).
    assert opened["start"] >= sim.ready_at + first.start * period - 0.01
    assert closed["end"] - closed["start"] >= (first.length - 1) * period - 0.01
    assert closed["end"] - closed["start"] < first.length * period + 2.0
    # What the agent's own Modbus source read matches the truth: a faulty row is never read
    # before its start, and everything read inside the episode is a faulty row.
    readings = [(t, row_of(r, rows, {})) for r, t in sink.timed("tcp")]
    assert all(k >= 0 for _, k in readings), "read values that are no row of the demo"
    faulty = [t for t, k in readings if first.start <= k < first.stop]
    assert len(faulty) >= 5
    assert min(faulty) >= opened["start"] - 0.01
    inside = [k for t, k in readings if opened["start"] + 0.1 <= t <= closed["end"]]
    assert inside
    assert all(first.start <= k < first.stop for k in inside)


@pytest.mark.parametrize("demo", [True, False])
def test_truth_lines_follow_the_served_episodes(tmp_path: Path, demo: bool) -> None:
    """The row feed through the truth log, row by row, with made-up times (row n at 1000 + n):
    the demo's schedule or the random plan, cut short inside an episode at the end."""
    feed = RowFeed(list(CHANNELS), seed=SEED, demo=demo)
    stream = DemoStream(seed=SEED) if demo else plant_stream()
    cut = next(e for e in stream.plant.episodes if e.length > 2 and e.start > 300)
    truth = TruthLog(tmp_path / "truth.jsonl")
    for row in range(cut.start + 2):
        feed.next_row()
        truth.served(feed.episode, 1000.0 + row)
    truth.close()
    served = [e for e in stream.plant.episodes if e.start <= cut.start]
    expected = [
        {"kind": e.kind, "channel": e.channel, "start": 1000.0 + e.start, "end": end}
        for e in served
        for end in (None, 1000.0 + min(e.stop - 1, cut.start + 1))
    ]
    assert read_truth(truth.path) == expected
    assert check_pairs(expected)[-1]["end"] == 1000.0 + cut.start + 1  # closed where it was cut
    assert (truth.written, truth.dropped) == (len(expected), 0)


def test_a_truth_file_on_a_full_disk_costs_lines_not_the_simulator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    truth = TruthLog(Path("/dev/full"))
    episode = FaultEpisode("spike", 10, 12, "pressure_bar")
    with caplog.at_level(logging.WARNING):
        truth.served((episode, 0), 1.0)
        truth.served((episode, 1), 2.0)
        truth.close()
    assert (truth.written, truth.dropped) == (0, 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("/dev/full" in w and '"kind": "spike"' in w for w in warnings)


def test_demo_and_truth_refuse_what_they_cannot_serve(tmp_path: Path) -> None:
    data = tmp_path / "h.csv"
    data.write_text("timestamp,pressure_bar\n2026-01-01T00:00:00Z,7\n")
    cfg = config(tcp(free_port(), [{"channel": "pressure_bar", "address": 0}]))
    ready = threading.Event()
    cases = [
        ({"data": data, "demo": True}, r"--demo .*--data .*h\.csv"),
        ({"data": data, "truth": tmp_path / "t.jsonl"}, r"--truth .*--data .*h\.csv"),
        ({"demo": True, "truth": tmp_path / "no-dir" / "t.jsonl"}, r"truth file .*no-dir"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            run_simulate(cfg, stop=threading.Event(), ready=ready.set, **kwargs)
    assert not ready.is_set()
    assert not (tmp_path / "t.jsonl").exists()


def test_simulate_demo_command_writes_the_truth_and_stops_cleanly(tmp_path: Path) -> None:
    port, truth, cfg = free_port(), tmp_path / "truth.jsonl", tmp_path / "demo.toml"
    cfg.write_text(
        'machine_id = "demo-test"\n'
        '[model]\nbundle = "none"\ntrust_key = "none.pub"\n'
        f'[[sources]]\ntype = "modbus_tcp"\nname = "sim"\nhost = "{HOST}"\nport = {port}\n'
        '[[sources.devices]]\nname = "c"\n'
        'points = [{ channel = "vibration_rms_mms", address = 0, type = "float32" }]\n'
    )
    command = [sys.executable, "-m", "edge_agent", "simulate", "--config", str(cfg)]
    args = ["--demo", "--truth", str(truth), "--speed", str(DEMO_SPEED), "--seed", str(SEED)]
    proc = subprocess.Popen([*command, *args], stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(read_truth(truth)) >= 2, 15.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10.0)
    assert proc.returncode == 0, err
    ends = check_pairs(read_truth(truth))
    assert (ends[0]["kind"], ends[0]["channel"]) == ("level_shift", DEMO_OPENING_CHANNEL)
    assert f"fault 'level_shift' on {DEMO_OPENING_CHANNEL}" in err
