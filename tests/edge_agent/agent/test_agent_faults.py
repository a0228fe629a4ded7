"""The daemon as systemd runs it, under faults: SIGKILL mid-run, SIGTERM, SIGHUP, a broker
that is down. Real subprocess, real Mosquitto, real SQLite; events come from a recorded file
replayed through the agent (the replay source), so the test controls when they happen."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from agent_support import AgentProcess, replay_source, write_config
from broker import Mosquitto, Subscriber

from edge_agent.deliver.outbox import read_recent
from edge_agent.simulator import simulate_plant

MACHINE = "test-machine"


@pytest.fixture(scope="module")
def quiet_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short stretch with no fault: a restarted agent that adds no new events."""
    path = tmp_path_factory.mktemp("quiet") / "quiet.csv"
    simulate_plant(rows=300, seed=5, anomaly_fraction=0.0).write_csv(path)
    return path


def _ids(state_dir: Path) -> list[str]:
    """Stored event ids, oldest first."""
    return [r.event_id for r in reversed(read_recent(state_dir / "events.db", limit=100_000))]


def test_sigkill_mid_run_then_restart_loses_no_event(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path, quiet_csv: Path
) -> None:
    broker = Mosquitto(tmp_path / "broker")  # not started yet: events pile up in the outbox
    cfg = write_config(
        tmp_path / "agent.toml", bundle=bundle, keys=keys, mqtt_port=broker.port,
        sources=replay_source(sim_csv, speed=3000.0),
    )
    first = AgentProcess(cfg)
    try:
        first.read_notify("READY=1", timeout=120)
        deadline = time.monotonic() + 60
        while len(_ids(tmp_path / "state")) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        first.proc.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        first.close()
    committed = _ids(tmp_path / "state")
    assert len(committed) >= 6

    broker.start()
    try:
        with Subscriber(broker.port, f"edge/{MACHINE}/events") as sub:
            second = AgentProcess(cfg, "--set", f"sources.0.path={quiet_csv}")
            try:
                got = sub.wait_until(
                    lambda msgs: {m.json()["id"] for m in msgs} >= set(committed), 60,
                    "every event committed before the SIGKILL",
                )
                assert second.wait(60) == 0
            finally:
                second.close()
        seen: list[str] = []
        for m in got:
            if m.json()["id"] not in seen:
                seen.append(m.json()["id"])
        assert [i for i in seen if i in committed] == committed  # in the order committed
    finally:
        broker.stop()


def test_sigterm_drains_the_outbox_and_leaves_offline_status(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path, mosquitto: Mosquitto
) -> None:
    cfg = write_config(
        tmp_path / "agent.toml", bundle=bundle, keys=keys, mqtt_port=mosquitto.port,
        sources=replay_source(sim_csv, speed=2000.0, loop=True),
    )
    with Subscriber(mosquitto.port, f"edge/{MACHINE}/#") as sub:
        agent = AgentProcess(cfg)
        try:
            agent.read_notify("READY=1", timeout=120)
            sub.wait_until(
                lambda ms: any(m.topic.endswith("/events") for m in ms), 60, "a first event"
            )
            agent.proc.send_signal(signal.SIGTERM)
            agent.read_notify("STOPPING=1", timeout=30)
            assert agent.wait(30) == 0
        finally:
            agent.close()
        status = sub.wait_until(
            lambda ms: any(m.topic.endswith("/status") and m.json().get("state") == "offline"
                           for m in ms), 10, "offline status",
        )
    assert any(m.retain or m.topic.endswith("/status") for m in status)
    stored = read_recent(tmp_path / "state" / "events.db", limit=100_000)
    assert stored
    assert all(not r.pending for r in stored), "SIGTERM must deliver what is queued first"
    delivered = {m.json()["id"] for m in status if m.topic.endswith("/events")}
    assert {r.event_id for r in stored} <= delivered


def test_sighup_reloads_config_and_refuses_a_broken_one(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path
) -> None:
    src = replay_source(sim_csv, speed=200.0, loop=True)
    cfg = write_config(tmp_path / "agent.toml", bundle=bundle, keys=keys, sources=src)
    agent = AgentProcess(cfg, watchdog_usec=1_000_000)
    try:
        agent.read_notify("READY=1", timeout=120)
        agent.read_notify("WATCHDOG=1", timeout=10)
        write_config(tmp_path / "agent.toml", bundle=bundle, keys=keys, sources=src,
                     machine_id="renamed-machine")
        agent.proc.send_signal(signal.SIGHUP)
        agent.read_notify("watching renamed-machine", timeout=60)
        assert any("RELOADING=1" in m for m in agent.messages)
        cfg.write_text(cfg.read_text().replace("[model]", "[model]\nbundel = 1", 1))
        agent.proc.send_signal(signal.SIGHUP)
        agent.read_notify("reload refused", timeout=60)
        n = len(agent.messages)
        agent.read_notify("WATCHDOG=1", timeout=10)  # still alive and looping
        assert len(agent.messages) > n
        assert agent.proc.poll() is None
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    finally:
        agent.close()
    log = agent.log()
    assert "config reloaded" in log
    assert "did you mean 'bundle'" in log


def test_bad_config_exits_2_with_the_problem(tmp_path: Path, bundle: Path, keys: Path) -> None:
    cfg = write_config(tmp_path / "agent.toml", bundle=bundle, keys=keys,
                       sources=replay_source(tmp_path / "missing.csv"))
    agent = AgentProcess(cfg, "--set", "mqtt.port=70000")
    try:
        assert agent.wait(60) == 2
    finally:
        agent.close()
    assert "mqtt.port" in agent.log()
    assert "70000" in agent.log()


def test_untrusted_bundle_exits_2(tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path) -> None:
    from export.keys import keygen

    keygen(tmp_path / "other")
    cfg = write_config(tmp_path / "agent.toml", bundle=bundle, keys=tmp_path / "other",
                       sources=replay_source(sim_csv))
    agent = AgentProcess(cfg)
    try:
        assert agent.wait(60) == 2
    finally:
        agent.close()
    assert "signature" in agent.log().lower()
