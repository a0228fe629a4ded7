"""Does a local training round disturb polling? A real agent's Modbus polls timed at the PLC.

Used by ``bench/fleet_learning.py`` (its device-cost block). The daemon (``python -m edge_agent
run``, a subprocess with a systemd notify socket and ``WATCHDOG_USEC``) polls a simulated
compressor over real Modbus TCP every ``POLL_PERIOD_S``; the pymodbus server runs in this
process (``edge_agent.simulate.server``) and timestamps every request it answers, so the poll
times are seen from the PLC's side, not reported by the agent. The agent's learn buffer is
filled beforehand with normal rows of the reference compressor (``NormalBuffer``, as its own
pushes would write it). Then a signed round is announced on ``<prefix>/fleet/round`` (fleet key
= the bundle's signing key) and the agent trains in its nice-19 child process until its delta
arrives on ``<prefix>/<machine>/delta``. The round is deliberately long (``--poll-epochs``
epochs over the buffer) so that it spans hundreds of polls. Reported: the intervals between
polls and between watchdog pings before and during the round (mean, p99, max), and the
round's CPU time.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT

from edge_agent.simulate.store import UnitTables

sys.path.insert(0, str(ROOT / "tests"))  # the tests' real-broker, agent and desk helpers
sys.path.insert(0, str(ROOT / "tests" / "edge_agent" / "agent"))

POLL_PERIOD_S = 0.1
WATCHDOG_USEC = 2_000_000  # the agent pings every half of it: 1 s
BEFORE_S = 8.0  # polls observed before the round is announced (default)
READY_TIMEOUT_S = 120.0
DELTA_TIMEOUT_S = 300.0
BUFFER_ROWS = 6000  # normal rows put in the buffer before the start (~5,800 windows)
PREFIX = "edge"
MACHINE = "poll-bench"
P99 = 99.0
POINTS = """points = [
    { channel = "pressure_bar",      address = 0, type = "float32" },
    { channel = "motor_current_a",   address = 2, type = "float32" },
    { channel = "oil_temp_c",        address = 4, type = "float32" },
    { channel = "flow_m3min",        address = 6, type = "float32" },
    { channel = "vibration_rms_mms", address = 8, type = "float32" },
]"""


class TimedTables(UnitTables):
    """The simulator's register tables, noting when each read request is answered."""

    def __init__(self, unit_ids: Any) -> None:
        super().__init__(unit_ids)
        self.reads: list[float] = []

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> Any:
        self.reads.append(time.monotonic())
        return await super().async_getValues(device_id, func_code, address, count)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _source_toml(port: int) -> str:
    return f"""[[sources]]
type = "modbus_tcp"
name = "plc"
host = "127.0.0.1"
port = {port}
timeout_s = 0.5

[[sources.devices]]
name = "compressor"
unit_id = 1
poll_period_s = {POLL_PERIOD_S}
{POINTS}
"""


def _intervals(times: list[float], start: float, stop: float) -> dict[str, float]:
    t = np.array([x for x in times if start <= x < stop])
    d = np.diff(t) if t.size > 1 else np.zeros(0)
    if d.size == 0:
        return {"count": int(t.size)}
    return {
        "count": int(t.size),
        "mean_s": round(float(d.mean()), 4),
        "p99_s": round(float(np.percentile(d, P99)), 4),
        "max_s": round(float(d.max()), 4),
    }


def _fill_buffer(state: Path, bundle: Any) -> int:
    from edge_agent.learn.buffer import BYTES_PER_MIB, BufferSettings, NormalBuffer
    from edge_agent.learn.config import DEFAULT_MAX_MB
    from edge_agent.learn.learner import BUFFER_DIR, LEARN_DIR
    from edge_agent.simulator import simulate_plant

    m = bundle.manifest
    plant = simulate_plant(
        rows=BUFFER_ROWS, seed=7, anomaly_fraction=0.0, start_time=time.time() - BUFFER_ROWS - 60.0
    )
    order = [plant.channels.index(c) for c in m.channel_names]
    buf = NormalBuffer(
        state / LEARN_DIR / BUFFER_DIR,
        BufferSettings(600, 0.0, int(DEFAULT_MAX_MB * BYTES_PER_MIB)),
    )
    buf.add(
        np.array(plant.timestamps), np.array(plant.values)[:, order], np.ones(plant.rows, bool), m
    )
    buf.flush(m)
    return int(buf.windows(m).shape[0])


def measure(
    bundle_dir: Path, keys: Path, work: Path, *, epochs: int, before_s: float = BEFORE_S
) -> dict[str, Any]:
    """Poll and watchdog intervals before and during one long local round; see the module."""
    from agent_support import AgentProcess
    from broker import Mosquitto, Subscriber, mosquitto_binary
    from ota_desk import Desk

    from edge_agent.bundle.verify import verify_bundle
    from edge_agent.learn.bundle_weights import load_train_weights
    from edge_agent.learn.device_key import write_key_pair
    from edge_agent.learn.rounds import RoundAnnouncement, iso_utc, round_topic, sign_round
    from edge_agent.simulate.server import ModbusEndpoint, ServerLoop
    from edge_agent.simulator import PlantStream
    from edge_agent.sources.config import ModbusTcpSource

    if mosquitto_binary() is None:
        return {"skipped": "mosquitto is not installed"}
    work.mkdir(parents=True, exist_ok=True)
    bundle = verify_bundle(bundle_dir, keys / "signing.pub")
    base = load_train_weights(bundle_dir, bundle.manifest)
    if base is None:
        return {"skipped": "the bundle is not trainable on the device"}
    windows = _fill_buffer(work / "state", bundle)
    write_key_pair(work / "device.key", work / "device.pub")
    port = _free_port()
    toml = _source_toml(port)
    source = ModbusTcpSource.model_validate(tomllib.loads(toml)["sources"][0])
    loop = ServerLoop()
    endpoint = ModbusEndpoint(source, loop)
    tables = TimedTables({1})
    endpoint.tables = tables
    endpoint.start()
    stop = threading.Event()
    stream = PlantStream(seed=7, anomaly_fraction=0.0)

    def feed() -> None:  # one plant row per model period, as edge_agent simulate does
        while not stop.is_set():
            _, values = stream.next_sample()
            endpoint.publish(dict(zip(stream.plant.channels, values.tolist(), strict=True)))
            stop.wait(bundle.manifest.sampling.period_s)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    broker = Mosquitto(work / "broker")
    broker.start()
    cfg = work / "agent.toml"
    cfg.write_text(f"""machine_id = "{MACHINE}"
state_dir = "{work / "state"}"

[model]
bundle = "{bundle_dir}"
trust_key = "{keys / "signing.pub"}"

{toml}
[metrics]
port = 0

[mqtt]
host = "127.0.0.1"
port = {broker.port}
heartbeat_s = 1

[learn]
enabled = true
device_key = "{work / "device.key"}"
sample_every_s = 0
""")
    agent = AgentProcess(cfg, watchdog_usec=WATCHDOG_USEC)
    pings: list[float] = []
    try:
        agent.read_notify("READY=1", timeout=READY_TIMEOUT_S)

        def notify() -> None:
            while not stop.is_set():
                try:
                    if "WATCHDOG=1" in agent.sock.recv(4096).decode():
                        pings.append(time.monotonic())
                except (TimeoutError, OSError):
                    continue

        threading.Thread(target=notify, daemon=True).start()
        with Subscriber(broker.port, f"{PREFIX}/{MACHINE}/+") as watch:
            time.sleep(before_s)
            now = time.time()
            ann = RoundAnnouncement(
                round_id="poll-bench",
                base_model_version=bundle.manifest.model_version,
                base_fingerprint=base.fingerprint(),
                epochs=epochs,
                batch_size=32,
                learning_rate=1e-3,
                topk_fraction=0.01,
                min_windows=100,
                issued_at=iso_utc(now),
                deadline=iso_utc(now + 3600),
            )
            desk = Desk(broker.port, keys / "signing.key", prefix=PREFIX)
            t_announce = time.monotonic()
            desk.put(round_topic(PREFIX), sign_round(ann, desk.key))
            watch.wait_until(
                lambda ms: any(m.topic.endswith("/delta") for m in ms), DELTA_TIMEOUT_S, "delta"
            )
            t_delta = time.monotonic()
            reports = watch.wait_until(
                lambda ms: any(m.topic.endswith("/learn") for m in ms), DELTA_TIMEOUT_S, "report"
            )
            report = next(m.json() for m in reports if m.topic.endswith("/learn"))
            desk.close()
    finally:
        stop.set()
        agent.close()
        endpoint.stop()
        loop.close()
        broker.stop()
    before = _intervals(tables.reads, t_announce - before_s, t_announce)
    during = _intervals(tables.reads, t_announce, t_delta)
    return {
        "poll_period_s": POLL_PERIOD_S,
        "buffer_windows": windows,
        "round_epochs": epochs,
        "round_cpu_s": report.get("cpu_s"),
        "round_outcome": report.get("outcome"),
        "round_wall_s": round(t_delta - t_announce, 2),
        "polls_before": before,
        "polls_during": during,
        "poll_rate_deviation": (
            round(during["mean_s"] / before["mean_s"] - 1.0, 4)
            if "mean_s" in during and "mean_s" in before
            else None
        ),
        "watchdog_before": _intervals(pings, t_announce - before_s, t_announce),
        "watchdog_during": _intervals(pings, t_announce, t_delta),
        "how": "a real agent polling a pymodbus server in the bench process every 0.1 s; the "
        "server timestamps each read; a signed round of --poll-epochs epochs over the "
        "prefilled buffer trains meanwhile in the agent's nice-19 child process",
    }
