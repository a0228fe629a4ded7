"""End to end over the real protocol: ``simulate`` serves the plant on a Modbus TCP server,
the daemon polls it as it would a PLC, under systemd's notify protocol and watchdog, with a
second Modbus device that is not there at all."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from pathlib import Path

from agent_support import AgentProcess, write_config
from broker import free_port

from edge_agent.cli import main as cli
from edge_agent.config.load import load_config
from edge_agent.simulate import run_simulate

POINTS = "\n".join(
    f'    {{ channel = "{ch}", address = {2 * i}, type = "float32", order = "CDAB" }},'
    for i, ch in enumerate(
        ["pressure_bar", "motor_current_a", "oil_temp_c", "flow_m3min", "vibration_rms_mms"]
    )
)


def _sources(live_port: int, dead_port: int) -> tuple[str, str]:
    live = f"""
[[sources]]
type = "modbus_tcp"
name = "plc"
host = "127.0.0.1"
port = {live_port}
[[sources.devices]]
name = "compressor"
poll_period_s = 0.5
points = [
{POINTS}
]
"""
    dead = f"""
[[sources]]
type = "modbus_tcp"
name = "gone"
host = "127.0.0.1"
port = {dead_port}
timeout_s = 0.2
backoff_max_s = 2.0
[[sources.devices]]
name = "spare"
points = [{{ channel = "spare_temp_c", address = 0, type = "int16", scale = 0.1 }}]
"""
    return live, dead


def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name}{labels} not in /metrics"
    return float(m.group(1))


def test_agent_polls_simulated_plant_over_modbus_tcp(
    tmp_path: Path, bundle: Path, keys: Path
) -> None:
    live, dead = _sources(free_port(), free_port())
    sim_cfg = write_config(tmp_path / "sim.toml", bundle=bundle, keys=keys, sources=live)
    stop, ready = threading.Event(), threading.Event()
    server = threading.Thread(
        target=run_simulate,
        args=(load_config(sim_cfg),),
        kwargs={"stop": stop, "ready": ready.set, "speed": 1.0},
        daemon=True,
    )
    server.start()
    assert ready.wait(30), "simulator did not come up"
    cfg = write_config(tmp_path / "agent.toml", bundle=bundle, keys=keys, sources=live + dead)
    agent = AgentProcess(cfg, watchdog_usec=2_000_000)
    try:
        agent.read_notify("READY=1", timeout=120)
        agent.read_notify("WATCHDOG=1", timeout=10)
        port = int(re.findall(r"metrics on http://[\d.]+:(\d+)/metrics", agent.log())[0])
        time.sleep(6)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        metrics = text.decode()
        # 0.5 s polls of 5 channels for ~6 s, and one row per 1 s model period
        assert _metric(metrics, "edge_agent_source_samples_total", '{source="plc"}') >= 40
        assert _metric(metrics, "edge_agent_rows_total") >= 4
        assert _metric(metrics, "edge_agent_source_poll_errors_total", '{source="gone"}') >= 1
        assert _metric(metrics, "edge_agent_source_samples_total", '{source="gone"}') == 0
        assert _metric(metrics, "edge_agent_channel_faulty", '{channel="pressure_bar"}') == 0
        assert agent.proc.poll() is None
    finally:
        agent.proc.terminate()
        agent.wait(30)
        stop.set()
        server.join(10)
    assert "spare_temp_c" in agent.log()  # read but not used by the model: said once
    assert cli(["events", "--config", str(cfg)]) == 0
