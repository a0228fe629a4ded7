"""The daemon under the faults a gateway meets in the field: an implausible sensor value, a
wall clock stepped by NTP, a source thread that crashes, a reload that races a stop.

The agent runs in-process (so the test can step its wall clock and read its counters) against
a real serial line, a ``socat`` pty pair fed by the test, with the real int8 bundle; or as
systemd runs it, in a subprocess with a notify socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from agent_support import AgentProcess, replay_source, write_config
from broker import Mosquitto
from waiting import wait_for

from edge_agent.agent import STOP_BUDGET_S, Agent
from edge_agent.bundle.verify import verify_bundle
from edge_agent.clock import Clock
from edge_agent.config.load import load_config
from edge_agent.deliver.outbox import read_recent
from edge_agent.service.supervisor import RestartPolicy
from edge_agent.simulate.ptys import PtyPair
from edge_agent.sources.serial_line import SerialLine

LINE_EVERY_S = 0.1
HOUR_S = 3600.0
NOISE_SCALES = 0.01  # the Board's spread, in training scales
FLT_MAX = float(np.finfo(np.float32).max)

pytestmark = pytest.mark.skipif(
    not any(Path(d, "socat").exists() for d in os.environ.get("PATH", "").split(":")),
    reason="socat not installed (apt-get install socat): the source is a real pty pair",
)


class Board:
    """A microcontroller on the other end of the pty: one CSV line of readings every 0.1 s,
    near each channel's training mean; ``override`` replaces a channel's value.

    The readings are independent draws, so sample to sample they are rougher than the plant's
    own: their spread is kept at 1 % of a training scale, well inside the noise and spike limits
    the model learned (at 10 %, a draw now and then was a spike by the learned limit)."""

    def __init__(self, sim_port: Path, means: list[float], scales: list[float]) -> None:
        self.means, self.scales = means, scales
        self.override: dict[int, float] = {}
        self._port = sim_port.open("wb", buffering=0)
        self._stop = threading.Event()
        self._rng = np.random.default_rng(1)
        self._thread = threading.Thread(target=self._run, name="test-board", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(LINE_EVERY_S):
            vals = [
                self.override.get(i, m + NOISE_SCALES * s * self._rng.standard_normal())
                for i, (m, s) in enumerate(zip(self.means, self.scales, strict=True))
            ]
            self._port.write((",".join(repr(float(v)) for v in vals) + "\n").encode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._port.close()


class SteppedClock:
    """The system clocks, with a wall clock the test can step."""

    def __init__(self) -> None:
        self.offset = 0.0

    def clock(self) -> Clock:
        return Clock(wall=lambda: time.time() + self.offset, mono=time.monotonic)


class LiveAgent:
    """An Agent running its main loop in a thread, watching the Board over the pty."""

    def __init__(self, agent: Agent, board: Board) -> None:
        self.agent, self.board = agent, board
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-agent", daemon=True)

    def _run(self) -> None:
        try:
            self.agent.start()
            self.agent.run()
        except BaseException as err:  # the test asserts there was none
            self.error = err
        finally:
            self.agent.stop()

    def rows_within(self, seconds: float) -> int:
        before = self.agent.counts["rows"]
        time.sleep(seconds)
        return self.agent.counts["rows"] - before

    def events(self) -> list[tuple[str, str, str]]:
        """(kind, state, reason or '') of every stored event, oldest first."""
        out = []
        for e in reversed(self.agent.outbox.recent(limit=10_000)):
            body = json.loads(e.payload)
            out.append((e.kind, e.state, str(body.get("reason", ""))))
        return out


@pytest.fixture
def live(
    tmp_path: Path, bundle: Path, keys: Path
) -> Iterator[Callable[..., LiveAgent]]:
    started: list[tuple[LiveAgent, PtyPair]] = []
    manifest = verify_bundle(bundle, keys / "signing.pub").manifest
    channels = manifest.channel_names

    def start(clock: Clock | None = None, **agent_args: object) -> LiveAgent:
        port = tmp_path / "ttyMCU"
        pty = PtyPair(str(port), source_index=0, source_name="mcu")
        pty.start()
        columns = ", ".join(f'"{c}"' for c in channels)
        cfg_path = write_config(
            tmp_path / "agent.toml", bundle=bundle, keys=keys,
            sources=(
                f'[[sources]]\ntype = "serial_line"\nname = "mcu"\nport = "{port}"\n'
                f'format = "csv"\ncolumns = [{columns}]\nreopen_s = 0.2\n'
            ),
            extra="[quality]\nstale_s = 3.0\nclear_samples = 3\n",
        )
        cfg = load_config(cfg_path, ["metrics.enabled=false"])
        board = Board(
            pty.sim_port, [c.mean for c in manifest.channels],
            [c.scale for c in manifest.channels],
        )
        kwargs: dict[str, object] = dict(agent_args)
        if clock is not None:
            kwargs["clock"] = clock
        agent = Agent(cfg_path, cfg, **kwargs)  # type: ignore[arg-type]
        live = LiveAgent(agent, board)
        started.append((live, pty))
        return live

    yield start
    for live, pty in started:
        live.agent.request_stop()
        live.thread.join(30)
        live.board.close()
        pty.stop()


def test_implausible_values_are_range_faults_and_scoring_goes_on(
    live: Callable[..., LiveAgent],
) -> None:
    """±FLT_MAX (the float32 'no reading' marker) and 1e39 on a channel without min/max used
    to put inf into a window and end the daemon; now they are a sensor fault."""
    a = live()
    a.thread.start()
    assert wait_for(lambda: a.agent.counts["rows"] >= 2, 30), a.error
    for bad in (1e39, FLT_MAX, -FLT_MAX):
        a.board.override[0] = bad
        assert a.rows_within(1.5) >= 1
    a.board.override.clear()
    assert wait_for(lambda: ("sensor_fault", "close", "range") in a.events(), 20), a.events()
    assert a.thread.is_alive()
    assert a.error is None
    assert ("sensor_fault", "open", "range") in a.events()
    assert a.agent.counts["loop_errors"] == 0
    assert a.agent.counts["windows_skipped"] == 0  # quality kept the values out of windows


@pytest.mark.parametrize("step", [-HOUR_S, HOUR_S])
def test_a_wall_clock_step_neither_stalls_nor_bursts_nor_raises_faults(
    live: Callable[..., LiveAgent], step: float
) -> None:
    clock = SteppedClock()
    a = live(clock=clock.clock())
    a.thread.start()
    assert wait_for(lambda: a.agent.counts["rows"] >= 3, 30), a.error
    clock.offset += step
    rows = a.rows_within(4.0)
    # One row a second: a loop stalled by the step makes none for the hour, one that catches
    # up bursts thousands. The band leaves room for a loaded CI host (2 rows were seen there).
    assert 1 <= rows <= 8, f"{rows} rows in 4 s after a {step:+.0f} s clock step"
    assert a.agent.counts["clock_steps"] == 1
    assert a.agent.counts["loop_errors"] == 0
    assert not [e for e in a.events() if e[0] == "sensor_fault"], a.events()
    assert not [e for e in a.events() if e[0] == "anomaly"], a.events()


def test_a_crashing_source_restarts_and_a_crash_loop_stops_the_watchdog(
    live: Callable[..., LiveAgent], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception outside what the source handles is restarted with backoff; if it keeps
    crashing past the limit the watchdog pings stop (systemd then restarts the agent), and
    they come back once the thread runs again."""
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 0.2 s
    a = live(thread_down_limit_s=1.0)
    source = a.agent.sources[0]
    assert isinstance(source, SerialLine)
    source.health.policy = RestartPolicy(initial_s=0.1, max_s=0.3, healthy_after_s=1.0)
    broken = threading.Event()
    real_parse = source.parse

    def parse(raw: bytes) -> dict[str, float]:
        if broken.is_set():
            raise RuntimeError("injected: a bug in the line parser")
        return real_parse(raw)

    monkeypatch.setattr(source, "parse", parse)

    def pings(seconds: float) -> int:
        n, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                n += sock.recv(4096).count(b"WATCHDOG=1")
        return n

    try:
        a.thread.start()
        assert wait_for(lambda: a.agent.counts["rows"] >= 2, 30), a.error
        assert pings(1.0) >= 3
        broken.set()
        assert wait_for(lambda: source.health.status()["crashes"] >= 2, 5)
        time.sleep(1.5)  # past the limit
        pings(0.3)  # drop the datagrams queued before it
        assert pings(1.0) == 0
        status = a.agent.health()["threads"]["source mcu"]
        assert status["crashes"] >= 2
        assert "injected" in str(status["last_error"])
        broken.clear()
        assert wait_for(lambda: pings(0.5) > 0, 10)
        before = source.counters.samples
        assert wait_for(lambda: source.counters.samples > before + 10, 5)
        assert a.thread.is_alive()
        assert a.error is None
    finally:
        sock.close()


def test_a_reload_right_after_a_stop_does_not_cancel_the_stop(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path
) -> None:
    cfg = write_config(
        tmp_path / "agent.toml", bundle=bundle, keys=keys,
        sources=replay_source(sim_csv, speed=20.0, loop=True),
    )
    proc = AgentProcess(cfg)
    try:
        proc.read_notify("READY=1", timeout=120)
        proc.proc.send_signal(signal.SIGTERM)
        proc.proc.send_signal(signal.SIGHUP)
        proc.read_notify("STOPPING=1", timeout=30)
        assert proc.wait(30) == 0, proc.log()
    finally:
        proc.close()



UNIT_STOP_TIMEOUT_S = 30.0  # systemd/edge-agent.service: TimeoutStopSec=30
EXIT_SLACK_S = 2.0
STALE_AFTER_READY_S = 15.0  # READY comes 10 s after start when no source ever answers


def test_a_stop_fits_the_units_stop_timeout_whatever_hangs(
    tmp_path: Path, bundle: Path, keys: Path, mosquitto: Mosquitto
) -> None:
    """Three Modbus links whose devices never answer (each request blocks for its timeout
    and retries) and a frozen broker holding unacknowledged events: the sources used to stop
    one after another and the drain took its full 20 s on top, past TimeoutStopSec, so
    systemd killed the agent before it could say `offline`."""
    manifest = verify_bundle(bundle, keys / "signing.pub").manifest
    channels = manifest.channel_names
    silent = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]  # accept, never answer
    try:
        sources = ""
        for i, server in enumerate(silent):
            points = ", ".join(
                f'{{ channel = "{ch}", address = {2 * j}, type = "float32" }}'
                for j, ch in enumerate(channels) if j % len(silent) == i
            )
            sources += (
                f'[[sources]]\ntype = "modbus_tcp"\nname = "plc{i}"\nhost = "127.0.0.1"\n'
                f"port = {server.getsockname()[1]}\ntimeout_s = 3.0\nretries = 2\n"
                f'[[sources.devices]]\nname = "d{i}"\nunit_id = 1\npoll_period_s = 1.0\n'
                f"points = [{points}]\n"
            )
        cfg = write_config(
            tmp_path / "agent.toml", bundle=bundle, keys=keys, sources=sources,
            mqtt_port=mosquitto.port, extra=f"[quality]\nstale_s = {STALE_AFTER_READY_S}\n",
        )
        proc = AgentProcess(cfg)
        try:
            proc.read_notify("READY=1", timeout=120)
            # Freeze the broker, then let the sensor faults (every channel goes stale) be
            # committed: they wait for a PUBACK that never comes.
            mosquitto.pause()
            state = tmp_path / "state" / "events.db"
            assert wait_for(lambda: state.exists() and len(read_recent(state)) >= 1, 60)
            time.sleep(1.0)
            t0 = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            code = proc.proc.wait(UNIT_STOP_TIMEOUT_S + 15)
            took = time.monotonic() - t0
        finally:
            mosquitto.resume()
            proc.close()
        assert code == 0, proc.log()
        # Within the agent's budget plus interpreter exit: what was left before the fix was
        # under 1 s of TimeoutStopSec here, and none with more or slower links.
        assert took < STOP_BUDGET_S + EXIT_SLACK_S < UNIT_STOP_TIMEOUT_S, f"stop took {took:.1f} s"
    finally:
        for server in silent:
            server.close()


def test_an_exception_in_the_main_loop_costs_rows_not_the_agent(
    live: Callable[..., LiveAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = live()
    a.thread.start()
    assert wait_for(lambda: a.agent.counts["rows"] >= 2, 30), a.error
    pipeline = a.agent.model.pipeline
    real_push = pipeline.push
    failures = [RuntimeError("injected: a bug in the pipeline")] * 3

    def push(ts: np.ndarray, values: np.ndarray) -> object:
        if failures:
            raise failures.pop()
        return real_push(ts, values)

    monkeypatch.setattr(pipeline, "push", push)
    assert wait_for(lambda: a.agent.counts["loop_errors"] == 3, 10)
    assert a.rows_within(3.0) >= 2  # scoring goes on after the failures
    assert a.thread.is_alive()
    assert a.error is None
