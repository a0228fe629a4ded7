"""``python -m edge_agent watch`` beside a real agent process, end to end.

The agent (``tests/edge_agent/agent/agent_support.py``: a subprocess with a notify socket)
replays the simulated plant in a loop with the real int8 bundle; with a real Mosquitto it
delivers its events there and the view, another subprocess, follows them as an upstream
consumer would; without a broker the view reads them from the agent's local store. Output is
a pipe, so the view prints plain lines. The terminal mode is driven in-process into a buffer.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agent.agent_support import ROOT, AgentProcess, replay_source, write_config
from broker import Mosquitto, free_port

from edge_agent.config.load import load_config
from edge_agent.watch.record import read_record
from edge_agent.watch.run import CLEAR_BELOW, HIDE_CURSOR, HOME, SHOW_CURSOR, Watch
from edge_agent.watch.summary import clock

REPLAY_ROWS_PER_S = 1500.0  # the whole simulated file (faults included) every 8 s
WATCH_MINUTES = 0.12  # 7.2 s
READY_TIMEOUT_S = 60.0
WATCH_EXIT_S = 30.0
RATE = re.compile(r"rows/s (\d+(?:\.\d+)?)")


def _watch(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "watch", "--config", str(config), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _agent(tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path, *,
           mqtt_port: int | None, metrics_port: int) -> tuple[Path, AgentProcess]:
    cfg = write_config(
        tmp_path / "agent.toml", bundle=bundle, keys=keys, mqtt_port=mqtt_port,
        sources=replay_source(sim_csv, speed=REPLAY_ROWS_PER_S, loop=True),
    )
    agent = AgentProcess(cfg, "--set", f"metrics.port={metrics_port}")
    agent.read_notify("READY=1", timeout=READY_TIMEOUT_S)
    return cfg, agent


def test_watch_follows_an_agent_over_mqtt(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path, mosquitto: Mosquitto
) -> None:
    metrics_port = free_port()
    cfg, agent = _agent(tmp_path, bundle, keys, sim_csv, mqtt_port=mosquitto.port,
                        metrics_port=metrics_port)
    record = tmp_path / "timeline.jsonl"
    try:
        view = _watch(cfg, "--set", f"metrics.port={metrics_port}",
                      "--minutes", str(WATCH_MINUTES), "--record", str(record))
        out, err = view.communicate(timeout=WATCH_EXIT_S)
    finally:
        agent.close()
    assert view.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == (f"watching test-machine: metrics http://127.0.0.1:{metrics_port}/metrics,"
                        f" events from 127.0.0.1:{mosquitto.port}")
    rates = [float(m.group(1)) for line in lines if (m := RATE.search(line))]
    assert rates, out
    assert max(rates) > REPLAY_ROWS_PER_S / 2, out
    status = [line for line in lines if RATE.search(line)]
    assert any(" status online" in line for line in status), out
    assert " agent_mqtt connected" in status[-1], out
    opened = [line for line in lines
              if " event edge/test-machine/events anomaly open " in line]
    assert opened, out
    assert re.search(r"p_anomaly [01]\.\d{4} channels \w+ \d+%", opened[0]), opened[0]
    summary = lines[lines.index("") + 1]
    assert summary.startswith("summary: watched 7.")
    found = re.search(r"; (\d+) anomaly episode", summary)
    assert found is not None, summary
    assert int(found.group(1)) >= len({line.split()[5] for line in opened})

    timeline = read_record(record)
    assert 5 <= len(timeline) <= 9  # one line a second
    rows = [t["rows"] or 0.0 for t in timeline]
    assert all(t["rows"] is not None for t in timeline)
    assert rows == sorted(rows)
    assert rows[-1] > rows[0]
    recorded = [e for t in timeline for e in t["events"]]
    assert any(e["kind"] == "anomaly" and e["state"] == "open" for e in recorded)


def test_watch_without_a_broker_reads_the_local_store_until_sigterm(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path
) -> None:
    metrics_port = free_port()
    cfg, agent = _agent(tmp_path, bundle, keys, sim_csv, mqtt_port=None,
                        metrics_port=metrics_port)
    store = load_config(cfg).state_dir / "events.db"
    try:
        view = _watch(cfg, "--set", f"metrics.port={metrics_port}")
        assert view.stdout is not None
        seen: list[str] = []
        for line in view.stdout:  # until the first event read from the store
            seen.append(line.rstrip("\n"))
            if f" event {store} " in line:
                break
        view.send_signal(signal.SIGTERM)
        out, err = view.communicate(timeout=WATCH_EXIT_S)
    finally:
        agent.close()
    assert view.returncode == 0, err
    lines = seen + out.splitlines()
    assert "no [mqtt] in the config: events stay local" in lines[0]
    assert any(f" event {store} " in line for line in lines)
    final = [line for line in lines if RATE.search(line)][-1]
    assert " agent_mqtt none " in final
    assert " status " not in final
    assert any(line.startswith("summary: watched ") for line in lines), out


def test_terminal_mode_redraws_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lines are cut to the terminal's width; an xdist worker has none (80 columns by default).
    monkeypatch.setenv("COLUMNS", "160")
    config = tmp_path / "agent.toml"
    port = free_port()  # nothing listens there: the agent is not up
    config.write_text(
        f'machine_id = "bench-1"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[model]\nbundle = "{tmp_path / "bundle"}"\ntrust_key = "{tmp_path / "k.pub"}"\n'
        f'[[sources]]\ntype = "replay"\npath = "{tmp_path / "x.csv"}"\n'
        f"[metrics]\nport = {port}\n"
    )
    out = io.StringIO()
    truth = tmp_path / "truth.jsonl"
    injected = time.time() - 5
    truth.write_text(json.dumps({"kind": "drift", "channel": "flow_m3min",
                                 "start": injected, "end": None}) + "\n")
    Watch(load_config(config), out=out, tty=True, truth=truth, minutes=0.04).run()
    text = out.getvalue()
    assert text.startswith(HIDE_CURSOR)
    frames = text.split(HOME)[1:]
    assert 2 <= len(frames) <= 4  # once a second for 2.4 s
    first = frames[0].split(CLEAR_BELOW)[0].split("\x1b[K\n")
    assert first[0].startswith("edge_agent watch")
    assert "bench-1" in first[0]
    assert first[1] == (f"agent     cannot read http://127.0.0.1:{port}/metrics: Connection "
                        "refused (retrying)")
    assert "injecting drift on flow_m3min for " in frames[0]
    assert "upstream  no [mqtt] in the config: events stay local" in first
    assert SHOW_CURSOR in frames[-1]
    summary = frames[-1].split(SHOW_CURSOR)[1].strip().splitlines()
    assert summary[0].startswith("summary: watched 2.4 s; 1 fault(s) injected, 0 detected, 1 ")
    assert summary[2].split() == ["drift", "flow_m3min", clock(injected), "running", "no", "-"]
