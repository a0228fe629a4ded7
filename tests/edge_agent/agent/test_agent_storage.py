"""The daemon on a disk that fills up: it keeps scoring and delivering, and recovers by itself.

A real agent process as systemd runs it, its state directory on a small tmpfs (the SD card),
a real Mosquitto and a subscriber. Before the fix a full disk made ``Outbox.add`` raise, the
agent exit with code 2, and the unit's ``RestartPreventExitStatus=2`` leave it failed for good.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from agent_support import AgentProcess, replay_source, write_config
from broker import Mosquitto, Subscriber
from disk import fill, mount_tmpfs, unmount
from waiting import wait_for

MACHINE = "test-machine"
DISK_BYTES = 3 << 20
RETRY_S = 0.5


def test_a_full_disk_degrades_the_agent_and_it_recovers_when_space_returns(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path, mosquitto: Mosquitto
) -> None:
    state = tmp_path / "state"  # where write_config puts state_dir
    why = mount_tmpfs(state, DISK_BYTES)
    if why is not None:
        pytest.skip(why)
    try:
        cfg = write_config(
            tmp_path / "agent.toml", bundle=bundle, keys=keys, mqtt_port=mosquitto.port,
            sources=replay_source(sim_csv, speed=400.0, loop=True),
            extra=f"[outbox]\nretry_s = {RETRY_S}\n",
        )
        with Subscriber(mosquitto.port, f"edge/{MACHINE}/events") as sub:
            proc = AgentProcess(cfg)
            try:
                proc.read_notify("READY=1", timeout=120)
                sub.wait_for(2, 60)
                filler = fill(state)
                assert wait_for(lambda: "events are kept in memory" in proc.log(), 60), (
                    proc.log()[-3000:]
                )
                during = len(sub.messages)
                sub.wait_for(during + 2, 60)  # alerts still go out while the disk is full
                assert proc.proc.poll() is None, proc.log()[-3000:]
                filler.unlink()
                assert wait_for(lambda: "works normally again" in proc.log(), 30), (
                    proc.log()[-3000:]
                )
                proc.proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) == 0, proc.log()[-3000:]
            finally:
                proc.close()
    finally:
        unmount(state)
