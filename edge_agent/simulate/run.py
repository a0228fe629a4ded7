"""``edge_agent simulate``: serve a config's sources from simulated or recorded data.

Stands in for the plant in front of the agent's pipeline, for demos, bench tests and
commissioning: every ``modbus_tcp`` source gets a real Modbus TCP server, every ``modbus_rtu``
source an RTU server on a pty pair linked at its ``port``, every ``serial_line`` source a pty
that receives one line per row. Rows advance one per ``1/speed`` seconds of wall time; the
agent, pointed at the same config, reads them as it would read the real machine. ``demo``
serves the demo fault schedule (every fault kind in turn, the first within a minute), and
``truth`` records each injected fault episode as it is served, for ``edge_agent watch``.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from edge_agent.config.model import AgentConfig
from edge_agent.errors import ConfigError
from edge_agent.simulate.lines import LineEndpoint
from edge_agent.simulate.ptys import PtyPair
from edge_agent.simulate.rows import ROW_PERIOD_S, RowFeed
from edge_agent.simulate.server import ModbusEndpoint, ServerLoop
from edge_agent.simulate.truth import TruthLog
from edge_agent.sources.config import (
    ModbusRtuSource,
    ModbusTcpSource,
    ReplaySource,
    SerialLineSource,
    source_channels,
)
from edge_agent.sources.modbus import next_due_after

log = logging.getLogger(__name__)


def run_simulate(
    config: AgentConfig,
    *,
    data: Path | None = None,
    seed: int = 0,
    fault_fraction: float = 0.08,
    speed: float = 1.0,
    demo: bool = False,
    truth: Path | None = None,
    stop: threading.Event | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve every non-replay source of ``config`` until ``stop`` is set (or forever).

    ``ready`` is called once every server listens. ``demo`` serves the demo fault schedule
    instead of a random plan (``fault_fraction`` does not apply); ``truth`` is a JSON-lines
    file the start and end of each served fault episode are appended to. Raises
    :class:`ConfigError` for what cannot be served: a channel missing from the data, a busy
    address, no socat, ``demo`` or ``truth`` with CSV data, a truth file that cannot be opened.
    """
    if not (math.isfinite(speed) and speed > 0):
        raise ConfigError(f"simulate: speed must be a positive number, got {speed!r}")
    served = [(i, s) for i, s in enumerate(config.sources) if not isinstance(s, ReplaySource)]
    if not served:
        raise ConfigError(
            "simulate: the config has no modbus_tcp, modbus_rtu or serial_line source to serve "
            "(replay sources read files and need no simulator)"
        )
    wanted = [ch for _, s in served for ch in source_channels(s)]
    every = any(isinstance(s, SerialLineSource) and not source_channels(s) for _, s in served)
    feed = RowFeed(
        wanted,
        data=data,
        seed=seed,
        fault_fraction=fault_fraction,
        all_channels=every,
        demo=demo,
    )
    if truth is not None and not feed.simulated:
        raise ConfigError(
            f"simulate: --truth records the faults the simulator injects; --data "
            f"{str(data)!r} is served as recorded, with none to record"
        )
    # The server lines pymodbus logs at INFO would drown the one line per endpoint below.
    pymodbus_log = logging.getLogger("pymodbus")
    pymodbus_log.setLevel(max(pymodbus_log.level, logging.WARNING))

    with ExitStack() as cleanup:
        if stop is None:
            stop = threading.Event()
            _stop_on_signals(stop, cleanup)
        truth_log: TruthLog | None = None
        if truth is not None:
            truth_log = TruthLog(truth)
            cleanup.callback(truth_log.close)
        loop = ServerLoop()
        cleanup.callback(loop.close)
        first = feed.next_row()
        modbus: list[ModbusEndpoint] = []
        lines: list[LineEndpoint] = []
        for index, source in served:
            sim_port: str | None = None
            if isinstance(source, ModbusRtuSource | SerialLineSource):
                pty = PtyPair(source.port, source_index=index, source_name=source.name)
                pty.start()
                cleanup.callback(pty.stop)
                sim_port = str(pty.sim_port)
            if isinstance(source, ModbusTcpSource | ModbusRtuSource):
                endpoint = ModbusEndpoint(source, loop)
                endpoint.tables.write(endpoint.encode_row(first))
                endpoint.start(sim_port)
                cleanup.callback(endpoint.stop)
                modbus.append(endpoint)
                _log_modbus(source)
            elif isinstance(source, SerialLineSource) and sim_port is not None:
                line = LineEndpoint(source, Path(sim_port), feed.channels)
                line.open()
                cleanup.callback(line.close)
                lines.append(line)
                log.info(
                    "serving %s: serial %s lines on %s", source.name, source.format, source.port
                )
        if ready is not None:
            ready()
        _serve(feed, modbus, lines, stop, ROW_PERIOD_S / speed, first, truth_log)


def _serve(
    feed: RowFeed,
    modbus: list[ModbusEndpoint],
    lines: list[LineEndpoint],
    stop: threading.Event,
    period_s: float,
    first: dict[str, float],
    truth: TruthLog | None,
) -> None:
    """Publish one row per period until ``stop``; skips rows rather than bursting if late.
    The Modbus tables already hold ``first``; the serial lines send it now."""
    for line in lines:
        line.publish(first)
    fault = _served(feed, "normal", truth)
    due = time.monotonic() + period_s
    while not stop.wait(max(0.0, due - time.monotonic())):
        row = feed.next_row()
        for endpoint in modbus:
            endpoint.publish(row)
        for line in lines:
            line.publish(row)
        fault = _served(feed, fault, truth)
        due = next_due_after(due, period_s, time.monotonic())


def _served(feed: RowFeed, fault: str, truth: TruthLog | None) -> str:
    """Log and record the ground truth of the row just published; returns its fault kind,
    which the next call gets as ``fault``."""
    episode = feed.episode
    if truth is not None:
        truth.served(episode, time.time())
    if episode is not None and episode[1] == 0:
        kind, channel, length = episode[0].kind, episode[0].channel, episode[0].length
        log.info("simulated plant: fault %r on %s for %d row(s)", kind, channel, length)
    elif feed.fault_kind != fault and feed.fault_kind == "normal":
        log.info("simulated plant: normal")
    return feed.fault_kind


def _stop_on_signals(stop: threading.Event, cleanup: ExitStack) -> None:
    """Run from the command line (no ``stop`` given): SIGTERM and SIGINT end the simulator
    through its clean-up, so no socat process or pty link outlives it."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.signal(signum, lambda *_: stop.set())
        cleanup.callback(signal.signal, signum, signal.SIG_DFL if previous is None else previous)


def _log_modbus(source: ModbusTcpSource | ModbusRtuSource) -> None:
    where = (
        f"modbus tcp on {source.host}:{source.port}"
        if isinstance(source, ModbusTcpSource)
        else f"modbus rtu on {source.port} ({source.baudrate} baud)"
    )
    units = ", ".join(f"{d.unit_id} ({len(d.points)} points)" for d in source.devices)
    log.info("serving %s: %s, units %s", source.name, where, units)
